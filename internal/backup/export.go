package backup

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"net"
	"sort"
	"sync"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/trace"
)

// Export is an NBD export of one disk of a snapshot, for restores. Its Name
// is the capability: 128 random bits, given only to whoever created it.
type Export struct {
	ID        string // API id (DELETE /exports/{id}); not the name
	Name      string // NBD export name
	Namespace string
	Snapshot  string // snapshot name
	Device    string
	ExpiresAt time.Time
	ClientIP  string // when set, only this address may connect
	CreatedAt time.Time
	image     *Image
	conns     int               // open NBD connections; guarded by exportRegistry.mu
	origin    trace.SpanContext // the request that created it, linked from each connection's span
}

// exportRegistry holds the exports this server serves. Exports live in
// memory: the server whose address an export's URI names serves it.
type exportRegistry struct {
	mu     sync.Mutex
	byID   map[string]*Export // guarded by mu
	byName map[string]*Export // guarded by mu
}

func newExportRegistry() *exportRegistry {
	return &exportRegistry{byID: map[string]*Export{}, byName: map[string]*Export{}}
}

// counts returns the number of exports and of open connections to them.
func (r *exportRegistry) counts() (exports, conns int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, e := range r.byID {
		conns += e.conns
	}
	return len(r.byID), conns
}

func randomHex(n int) string {
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		panic("backup: crypto/rand failed: " + err.Error()) // cannot happen on Linux (getrandom)
	}
	return hex.EncodeToString(b)
}

// CreateExport makes an NBD export of one disk of a committed snapshot,
// valid for ttl; clientIP, when set, binds it to that client address.
func (s *Service) CreateExport(ctx context.Context, snap Snapshot, device string, ttl time.Duration, clientIP string) (Export, error) {
	if snap.State != SnapshotCommitted {
		return Export{}, Errorf(ErrNotFound, "snapshot %s is not committed", snap.Name)
	}
	im, err := s.OpenImage(ctx, snap, device)
	if err != nil {
		return Export{}, err
	}
	now := s.now().UTC()
	e := &Export{
		ID: randomHex(8), Name: randomHex(16), Namespace: snap.Namespace, Snapshot: snap.Name, Device: device,
		ExpiresAt: now.Add(ttl).Truncate(time.Second), ClientIP: clientIP, CreatedAt: now, image: im,
		origin: trace.SpanContextFromContext(ctx),
	}
	r := s.exports
	r.mu.Lock()
	defer r.mu.Unlock()
	r.byID[e.ID] = e
	r.byName[e.Name] = e
	return *e, nil
}

// ListExports returns the live exports, oldest first.
func (s *Service) ListExports() []Export {
	r := s.exports
	now := s.now()
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []Export
	for _, e := range r.byID {
		if now.Before(e.ExpiresAt) {
			out = append(out, *e)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].CreatedAt.Before(out[j].CreatedAt) })
	return out
}

// GetExport returns a live export by API id.
func (s *Service) GetExport(id string) (Export, error) {
	r := s.exports
	r.mu.Lock()
	defer r.mu.Unlock()
	e := r.byID[id]
	if e == nil || !s.now().Before(e.ExpiresAt) {
		return Export{}, Errorf(ErrNotFound, "export %s not found or expired", id)
	}
	return *e, nil
}

// DeleteExport removes an export: no new connection is accepted; open ones
// finish what they are reading.
func (s *Service) DeleteExport(id string) error {
	r := s.exports
	r.mu.Lock()
	defer r.mu.Unlock()
	e := r.byID[id]
	if e == nil {
		return Errorf(ErrNotFound, "export %s not found", id)
	}
	delete(r.byID, id)
	delete(r.byName, e.Name)
	return nil
}

// OpenExport returns the image behind an export name for a client at
// remote, and a release func to call when the connection ends. An unknown,
// expired or foreign-bound name is ErrNotFound: the client learns nothing
// about names that exist.
func (s *Service) OpenExport(name string, remote net.Addr) (*Image, func(), error) {
	r := s.exports
	r.mu.Lock()
	defer r.mu.Unlock()
	e := r.byName[name]
	if e == nil || !s.now().Before(e.ExpiresAt) || (e.ClientIP != "" && e.ClientIP != hostOf(remote)) {
		return nil, nil, Errorf(ErrNotFound, "no such export")
	}
	e.conns++
	// One span per restore connection, from the NBD handshake to its end:
	// a trace of its own (a connection may come hours after the request),
	// linked to the request that created the export.
	_, span := s.tracerOrNoop().Start(context.Background(), "backup.restore_export", trace.WithAttributes(
		attribute.String("namespace", e.Namespace), attribute.String("snapshot", e.Snapshot), attribute.String("disk", e.Device)),
		trace.WithLinks(trace.Link{SpanContext: e.origin}))
	var once sync.Once
	return e.image, func() {
		once.Do(func() {
			r.mu.Lock()
			e.conns--
			r.mu.Unlock()
			span.End()
		})
	}, nil
}

// ExportNames lists the names a client at remote may open (NBD_OPT_LIST).
func (s *Service) ExportNames(remote net.Addr) []string {
	var out []string
	for _, e := range s.ListExports() {
		if e.ClientIP != "" && e.ClientIP == hostOf(remote) {
			out = append(out, e.Name)
		}
	}
	return out
}

// expireExports forgets expired exports nobody reads any more.
func (s *Service) expireExports() {
	r := s.exports
	now := s.now()
	r.mu.Lock()
	defer r.mu.Unlock()
	for id, e := range r.byID {
		if !now.Before(e.ExpiresAt) && e.conns == 0 {
			delete(r.byID, id)
			delete(r.byName, e.Name)
		}
	}
}

func hostOf(a net.Addr) string {
	if a == nil {
		return ""
	}
	host, _, err := net.SplitHostPort(a.String())
	if err != nil {
		return a.String()
	}
	return host
}
