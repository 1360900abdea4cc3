package backup

import (
	"context"
	"errors"
	"sync"
	"time"
)

// Namespace is a PVE cluster or tenant, with its optional quota.
type Namespace struct {
	Name       string
	QuotaBytes *int64 // nil: no quota
	CreatedAt  time.Time
}

// UsageFigures are the accounting figures of a set of committed snapshots,
// computed from the catalog's reference counts.
type UsageFigures struct {
	Snapshots    int64
	LogicalBytes int64 // sum of snapshot sizes
	NewBytes     int64 // sum of what each backup stored that no earlier one had, at its time
	// Chunks and StoredBytes count the distinct chunks the snapshots
	// reference (envelopes included), each once however many share it.
	Chunks      int64
	StoredBytes int64
	// ExclusiveBytes are the stored bytes of the chunks that no committed
	// snapshot outside the set references: what deleting the whole set
	// (and a GC) frees.
	ExclusiveBytes int64
}

// GuestUsage are the figures of one guest's snapshots in a namespace.
// Exclusive bytes are those no other snapshot in the repository shares.
type GuestUsage struct {
	VMID int
	Type GuestType
	UsageFigures
}

// Usage are the figures of a namespace (or of one guest in it, when asked
// for one) and of each guest.
type Usage struct {
	Namespace  string
	QuotaBytes *int64
	UsageFigures
	Guests []GuestUsage // by vmid, then type
}

// Usage returns the accounting figures of a namespace, or of one guest in
// it (vmid > 0), with the namespace's quota.
func (s *Service) Usage(ctx context.Context, ns string, vmid int) (Usage, error) {
	u, err := s.catalog.Usage(ctx, ns, vmid)
	if err != nil {
		return Usage{}, err
	}
	u.Namespace = ns
	n, err := s.catalog.GetNamespace(ctx, ns)
	switch {
	case err == nil:
		u.QuotaBytes = n.QuotaBytes
	case !errors.Is(err, ErrNotFound):
		return Usage{}, err
	}
	return u, nil
}

// CheckQuota refuses a new backup in a namespace whose stored bytes have
// reached its quota: ErrStorageFull, with a detail naming both figures.
func (s *Service) CheckQuota(ctx context.Context, ns string) error {
	n, err := s.catalog.GetNamespace(ctx, ns)
	if errors.Is(err, ErrNotFound) {
		return nil // never used: no quota yet
	}
	if err != nil {
		return err
	}
	if n.QuotaBytes == nil {
		return nil
	}
	used, err := s.stored.get(ctx, ns, s.now(), s.catalog.NamespaceStoredBytes)
	if err != nil {
		return err
	}
	if used >= *n.QuotaBytes {
		return Errorf(ErrStorageFull, "namespace %s stores %d bytes and its quota is %d bytes; prune or delete snapshots, or raise the quota",
			ns, used, *n.QuotaBytes)
	}
	return nil
}

// storedTTL is how long a namespace's stored bytes serve quota checks.
// Counting them reads every reference of the namespace (about a second per
// two million), too slow for every backup start; a commit or delete through
// this replica forgets the figure at once, one through another replica
// shows within storedTTL.
const storedTTL = time.Minute

// storedCache keeps namespaces' stored bytes for quota checks. The zero
// value is ready to use.
type storedCache struct {
	mu sync.Mutex
	m  map[string]storedEntry // guarded by mu
}

type storedEntry struct {
	bytes int64
	at    time.Time
}

// get returns the namespace's stored bytes, counted by count when the
// cached figure is missing or older than storedTTL.
func (c *storedCache) get(ctx context.Context, ns string, now time.Time, count func(context.Context, string) (int64, error)) (int64, error) {
	c.mu.Lock()
	e, ok := c.m[ns]
	c.mu.Unlock()
	if ok && now.Sub(e.at) < storedTTL {
		return e.bytes, nil
	}
	n, err := count(ctx, ns)
	if err != nil {
		return 0, err
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.m == nil {
		c.m = map[string]storedEntry{}
	}
	c.m[ns] = storedEntry{bytes: n, at: now}
	return n, nil
}

// forget drops a namespace's figure after its snapshots changed.
func (c *storedCache) forget(ns string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	delete(c.m, ns)
}
