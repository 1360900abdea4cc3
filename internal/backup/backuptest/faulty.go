package backuptest

import (
	"context"
	"sync"

	"github.com/backstop-pve/backstop/internal/backup"
)

// Method names a ChunkStore method whose calls can be given faults.
type Method string

// Methods that take faults. Sum is pure and never fails.
const (
	MethodPut    Method = "Put"
	MethodGet    Method = "Get"
	MethodDelete Method = "Delete"
)

// Fault says what happens to the calls of one method that it hits.
type Fault struct {
	// Err is returned by each hit call. A nil Err with a Hook runs the hook
	// and then the wrapped store normally.
	Err error
	// After makes a hit call run the wrapped store first and return Err
	// only if the store succeeded: the operation took effect but the
	// caller sees a failure, as when a response is lost.
	After bool
	// Skip lets this many calls through before the fault starts to hit.
	Skip int
	// Times is how many calls the fault hits: 0 means once, a negative
	// value every call from then on.
	Times int
	// Hook runs at the start of each hit call, with its context: to count,
	// to block until the context ends, or to cancel it.
	Hook func(ctx context.Context)
}

// FaultyChunkStore wraps a ChunkStore and injects faults per method, in the
// order they were added: the first unexhausted fault of a method decides
// each call. Calls without a pending fault go to the wrapped store. It is
// safe for concurrent use; with concurrent callers, which call a fault hits
// is up to the scheduler.
type FaultyChunkStore struct {
	base backup.ChunkStore

	mu     sync.Mutex
	faults map[Method][]*Fault // guarded by mu; queue per method
	calls  map[Method]int      // guarded by mu
}

var _ backup.ChunkStore = (*FaultyChunkStore)(nil)

// NewFaultyChunkStore wraps base; it injects nothing until Inject is called.
func NewFaultyChunkStore(base backup.ChunkStore) *FaultyChunkStore {
	return &FaultyChunkStore{base: base, faults: make(map[Method][]*Fault), calls: make(map[Method]int)}
}

// Inject queues fault for method m.
func (f *FaultyChunkStore) Inject(m Method, fault Fault) {
	if fault.Times == 0 {
		fault.Times = 1
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	f.faults[m] = append(f.faults[m], &fault)
}

// Calls returns how many times method m was called.
func (f *FaultyChunkStore) Calls(m Method) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.calls[m]
}

// Pending returns how many faults of method m have hits left (faults that
// hit forever count as pending), so a test can check that all fired.
func (f *FaultyChunkStore) Pending(m Method) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return len(f.faults[m])
}

// take counts a call of m and returns the fault that hits it, if any.
func (f *FaultyChunkStore) take(m Method) (Fault, bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls[m]++
	q := f.faults[m]
	if len(q) == 0 {
		return Fault{}, false
	}
	ft := q[0]
	if ft.Skip > 0 {
		ft.Skip--
		return Fault{}, false
	}
	if ft.Times > 0 {
		ft.Times--
		if ft.Times == 0 {
			f.faults[m] = q[1:]
		}
	}
	return *ft, true
}

// apply runs call under the fault that hits method m, if any.
func (f *FaultyChunkStore) apply(ctx context.Context, m Method, call func() error) error {
	ft, hit := f.take(m)
	if !hit {
		return call()
	}
	if ft.Hook != nil {
		ft.Hook(ctx)
	}
	if ft.Err == nil {
		return call()
	}
	if ft.After {
		if err := call(); err != nil {
			return err
		}
	}
	return ft.Err
}

// Sum calls the wrapped store; it takes no faults.
func (f *FaultyChunkStore) Sum(data []byte) backup.ChunkID { return f.base.Sum(data) }

// Put calls the wrapped store unless a fault says otherwise.
func (f *FaultyChunkStore) Put(ctx context.Context, id backup.ChunkID, data []byte) (int64, error) {
	var n int64
	err := f.apply(ctx, MethodPut, func() error {
		var err error
		n, err = f.base.Put(ctx, id, data)
		return err
	})
	if err != nil {
		return 0, err
	}
	return n, nil
}

// Get calls the wrapped store unless a fault says otherwise.
func (f *FaultyChunkStore) Get(ctx context.Context, id backup.ChunkID, buf []byte) ([]byte, error) {
	var out []byte
	err := f.apply(ctx, MethodGet, func() error {
		var err error
		out, err = f.base.Get(ctx, id, buf)
		return err
	})
	if err != nil {
		return nil, err
	}
	return out, nil
}

// Delete calls the wrapped store unless a fault says otherwise.
func (f *FaultyChunkStore) Delete(ctx context.Context, ids []backup.ChunkID) error {
	return f.apply(ctx, MethodDelete, func() error { return f.base.Delete(ctx, ids) })
}
