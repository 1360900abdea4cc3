package telemetry

import (
	"context"
	"log/slog"
	"strconv"
	"sync"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"

	"github.com/backstop-pve/backstop/internal/backup"
)

const catalogMeter = "github.com/backstop-pve/backstop/internal/catalog"

// RegisterPoolStats exports the catalog's connection pool figures, read
// from stat at each collection (pgxpool.Stat is a cheap snapshot).
func RegisterPoolStats(mp metric.MeterProvider, stat func() *pgxpool.Stat) error {
	m := mp.Meter(catalogMeter)
	conns, err := m.Int64ObservableGauge("backstop.db.pool.connections", metric.WithUnit("{connection}"),
		metric.WithDescription("Catalog pool connections by state (idle, acquired, constructing)."))
	if err != nil {
		return err
	}
	maxConns, err := m.Int64ObservableGauge("backstop.db.pool.max_connections", metric.WithUnit("{connection}"),
		metric.WithDescription("Most connections the catalog pool opens."))
	if err != nil {
		return err
	}
	acquires, err := m.Int64ObservableCounter("backstop.db.pool.acquires", metric.WithUnit("{acquire}"),
		metric.WithDescription("Connections acquired from the catalog pool."))
	if err != nil {
		return err
	}
	waits, err := m.Int64ObservableCounter("backstop.db.pool.empty_acquires", metric.WithUnit("{acquire}"),
		metric.WithDescription("Acquires that had to wait for a connection."))
	if err != nil {
		return err
	}
	waited, err := m.Float64ObservableCounter("backstop.db.pool.acquire_wait", metric.WithUnit("s"),
		metric.WithDescription("Time spent waiting for a catalog connection."))
	if err != nil {
		return err
	}
	state := func(s string) metric.ObserveOption { return metric.WithAttributes(attribute.String("state", s)) }
	_, err = m.RegisterCallback(func(_ context.Context, o metric.Observer) error {
		st := stat()
		o.ObserveInt64(conns, int64(st.IdleConns()), state("idle"))
		o.ObserveInt64(conns, int64(st.AcquiredConns()), state("acquired"))
		o.ObserveInt64(conns, int64(st.ConstructingConns()), state("constructing"))
		o.ObserveInt64(maxConns, int64(st.MaxConns()))
		o.ObserveInt64(acquires, st.AcquireCount())
		o.ObserveInt64(waits, st.EmptyAcquireCount())
		o.ObserveFloat64(waited, st.EmptyAcquireWaitTime().Seconds())
		return nil
	}, conns, maxConns, acquires, waits, waited)
	return err
}

// LastBackups keeps, per guest, the time and size of its newest committed
// snapshot, refreshed from the catalog by Run (like the status cache), and
// exports them as gauges: a scrape reads memory, never the catalog.
type LastBackups struct {
	log      *slog.Logger
	list     func(context.Context) ([]backup.LastBackup, error)
	interval time.Duration

	mu  sync.Mutex
	cur []backup.LastBackup // guarded by mu
	ok  bool                // guarded by mu; the last refresh succeeded
}

// NewLastBackups registers the gauges on mp; list is the catalog query.
func NewLastBackups(log *slog.Logger, mp metric.MeterProvider, list func(context.Context) ([]backup.LastBackup, error),
	interval time.Duration) (*LastBackups, error) {
	l := &LastBackups{log: log, list: list, interval: interval}
	m := mp.Meter(catalogMeter)
	at, err := m.Float64ObservableGauge("backstop.guest.last_backup.timestamp", metric.WithUnit("s"),
		metric.WithDescription("Backup time (Unix seconds) of the newest committed snapshot of each guest."))
	if err != nil {
		return nil, err
	}
	size, err := m.Int64ObservableGauge("backstop.guest.last_backup.size", metric.WithUnit("By"),
		metric.WithDescription("Logical size of the newest committed snapshot of each guest."))
	if err != nil {
		return nil, err
	}
	up, err := m.Int64ObservableGauge("backstop.guest.last_backup.refresh_ok",
		metric.WithDescription("1 when the last refresh of the per-guest figures from the catalog succeeded."))
	if err != nil {
		return nil, err
	}
	_, err = m.RegisterCallback(func(_ context.Context, o metric.Observer) error {
		l.mu.Lock()
		defer l.mu.Unlock()
		for _, b := range l.cur {
			attrs := metric.WithAttributes(attribute.String("namespace", b.Namespace),
				attribute.String("vmid", strconv.Itoa(b.VMID)), attribute.String("type", string(b.Type)))
			o.ObserveFloat64(at, float64(b.Time.UnixNano())/1e9, attrs)
			o.ObserveInt64(size, b.Size, attrs)
		}
		v := int64(0)
		if l.ok {
			v = 1
		}
		o.ObserveInt64(up, v)
		return nil
	}, at, size, up)
	if err != nil {
		return nil, err
	}
	return l, nil
}

// Run refreshes the figures every interval until ctx ends.
func (l *LastBackups) Run(ctx context.Context) {
	t := time.NewTicker(l.interval)
	defer t.Stop()
	for {
		l.Refresh(ctx)
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// Refresh reads the catalog once. On failure the last figures stay (an
// unreachable catalog must not look like guests without backups).
func (l *LastBackups) Refresh(ctx context.Context) {
	ctx, cancel := context.WithTimeout(ctx, max(l.interval, time.Second))
	defer cancel()
	list, err := l.list(ctx)
	l.mu.Lock()
	defer l.mu.Unlock()
	l.ok = err == nil
	if err != nil {
		if ctx.Err() == nil || ctx.Err() == context.DeadlineExceeded {
			l.log.WarnContext(ctx, "refresh last-backup metrics", "err", err)
		}
		return
	}
	l.cur = list
}
