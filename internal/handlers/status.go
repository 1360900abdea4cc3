package handlers

import (
	"context"
	"log/slog"
	"sync"
	"time"

	"github.com/backstop-pve/backstop/api"
	"github.com/backstop-pve/backstop/internal/backup"
)

// StatusCache answers GET /status from memory. PVE's pvestatd polls every
// storage every 10 s and gives up after 7 s, so the answer must never wait
// for the catalog: a background loop refreshes it instead.
type StatusCache struct {
	log      *slog.Logger
	stats    func(context.Context) (backup.RepositoryStats, error)
	capacity func(context.Context) (total, avail int64, err error) // nil: unknown
	interval time.Duration
	now      func() time.Time

	mu  sync.RWMutex
	cur api.Status // guarded by mu
}

// NewStatusCache returns a cache refreshed every interval by Run. capacity
// may be nil when the store has no notion of free space.
func NewStatusCache(log *slog.Logger, stats func(context.Context) (backup.RepositoryStats, error),
	capacity func(context.Context) (int64, int64, error), interval time.Duration) *StatusCache {
	msg := "status not computed yet"
	return &StatusCache{
		log: log, stats: stats, capacity: capacity, interval: interval, now: time.Now,
		cur: api.Status{Active: false, Error: &msg, UpdatedAt: time.Now().UTC()},
	}
}

// Run refreshes the cache until ctx ends.
func (c *StatusCache) Run(ctx context.Context) {
	t := time.NewTicker(c.interval)
	defer t.Stop()
	for {
		c.Refresh(ctx)
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// Refresh recomputes the status once. On failure the last figures stay, and
// the status says inactive with the reason, which is what PVE shows.
func (c *StatusCache) Refresh(ctx context.Context) {
	ctx, cancel := context.WithTimeout(ctx, c.interval)
	defer cancel()
	st, err := c.stats(ctx)
	var total, avail int64
	if err == nil && c.capacity != nil {
		total, avail, err = c.capacity(ctx)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	c.cur.UpdatedAt = c.now().UTC()
	if err != nil {
		if ctx.Err() == nil || ctx.Err() == context.DeadlineExceeded {
			c.log.WarnContext(ctx, "status refresh failed", "err", err)
		}
		msg := "catalog or chunk store unavailable"
		c.cur.Active, c.cur.Error = false, &msg
		return
	}
	c.cur = api.Status{
		Active:       true,
		Snapshots:    st.Snapshots,
		LogicalBytes: st.LogicalBytes,
		StoredBytes:  st.StoredBytes,
		Chunks:       st.Chunks,
		Used:         st.StoredBytes,
		UpdatedAt:    c.cur.UpdatedAt,
	}
	if st.StoredBytes > 0 {
		c.cur.DedupRatio = float32(float64(st.LogicalBytes) / float64(st.StoredBytes))
	}
	if c.capacity != nil {
		c.cur.Total, c.cur.Avail = total, avail
	} else {
		c.cur.Total = st.StoredBytes
	}
}

// Get returns the cached status.
func (c *StatusCache) Get() api.Status {
	c.mu.RLock()
	defer c.mu.RUnlock()
	return c.cur
}

func (h *handler) GetStatus(ctx context.Context, _ api.GetStatusRequestObject) (api.GetStatusResponseObject, error) {
	return api.GetStatus200JSONResponse(h.status.Get()), nil
}
