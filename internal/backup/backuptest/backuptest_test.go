package backuptest_test

import (
	"context"
	"errors"
	"testing"

	"github.com/backstop-pve/backstop/internal/backup"
	"github.com/backstop-pve/backstop/internal/backup/backuptest"
)

func TestMemChunkStore(t *testing.T) {
	backuptest.RunChunkStoreTests(t, func(t *testing.T) backup.ChunkStore {
		return backuptest.NewMemChunkStore()
	})
}

// A FaultyChunkStore without faults must be transparent.
func TestFaultyChunkStore_Conformance(t *testing.T) {
	backuptest.RunChunkStoreTests(t, func(t *testing.T) backup.ChunkStore {
		return backuptest.NewFaultyChunkStore(backuptest.NewMemChunkStore())
	})
}

func TestMemChunkStore_ZeroChunkNotCounted(t *testing.T) {
	m := backuptest.NewMemChunkStore()
	zero := make([]byte, 4096)
	if n, err := m.Put(t.Context(), m.Sum(zero), zero); n != 0 || err != nil {
		t.Fatalf("Put(zero) = %d, %v", n, err)
	}
	if got := m.Puts(); got != 0 {
		t.Fatalf("Puts() = %d after a zero chunk, want 0", got)
	}
}

func TestMemChunkStore_Corrupt(t *testing.T) {
	m := backuptest.NewMemChunkStore()
	data := backuptest.Payload("text", 1, 1000)
	id := m.Sum(data)
	if _, err := m.Put(t.Context(), id, data); err != nil {
		t.Fatal(err)
	}
	if !m.Corrupt(id) {
		t.Fatal("Corrupt: chunk not found")
	}
	if _, err := m.Get(t.Context(), id, nil); !errors.Is(err, backup.ErrChecksum) {
		t.Fatalf("Get(corrupted) = %v, want ErrChecksum", err)
	}
	if m.Corrupt(m.Sum([]byte("x"))) {
		t.Fatal("Corrupt(missing) = true")
	}
}

func TestFaultyChunkStore_Faults(t *testing.T) {
	ctx := t.Context()
	boom := errors.New("boom")
	mem := backuptest.NewMemChunkStore()
	f := backuptest.NewFaultyChunkStore(mem)
	data := backuptest.Payload("random", 1, 1000)
	id := f.Sum(data)

	// Skip one call, then fail twice, then pass.
	f.Inject(backuptest.MethodPut, backuptest.Fault{Err: boom, Skip: 1, Times: 2})
	var errs []error
	for range 4 {
		_, err := f.Put(ctx, id, data)
		errs = append(errs, err)
	}
	for i, want := range []error{nil, boom, boom, nil} {
		if !errors.Is(errs[i], want) || (want == nil) != (errs[i] == nil) {
			t.Errorf("Put call %d = %v, want %v", i, errs[i], want)
		}
	}
	if got := f.Calls(backuptest.MethodPut); got != 4 {
		t.Errorf("Calls(Put) = %d, want 4", got)
	}
	if got := f.Pending(backuptest.MethodPut); got != 0 {
		t.Errorf("Pending(Put) = %d, want 0", got)
	}

	// After: the delete happens, but the caller sees an error.
	f.Inject(backuptest.MethodDelete, backuptest.Fault{Err: boom, After: true})
	if err := f.Delete(ctx, []backup.ChunkID{id}); !errors.Is(err, boom) {
		t.Fatalf("Delete with After fault = %v, want boom", err)
	}
	if mem.Has(id) {
		t.Fatal("Delete with After fault did not reach the wrapped store")
	}

	// Forever, and a hook that sees the call's context.
	hooked := 0
	f.Inject(backuptest.MethodGet, backuptest.Fault{Err: backup.ErrUnavailable, Times: -1,
		Hook: func(ctx context.Context) { hooked++ }})
	for range 3 {
		if _, err := f.Get(ctx, id, nil); !errors.Is(err, backup.ErrUnavailable) {
			t.Fatalf("Get with forever fault = %v", err)
		}
	}
	if hooked != 3 || f.Pending(backuptest.MethodGet) != 1 {
		t.Fatalf("hook ran %d times, pending %d; want 3, 1", hooked, f.Pending(backuptest.MethodGet))
	}
}

// A hook-only fault can cancel the call's context, which the wrapped store
// then sees.
func TestFaultyChunkStore_HookCancels(t *testing.T) {
	f := backuptest.NewFaultyChunkStore(backuptest.NewMemChunkStore())
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	f.Inject(backuptest.MethodPut, backuptest.Fault{Hook: func(context.Context) { cancel() }})
	data := backuptest.Payload("text", 2, 100)
	if _, err := f.Put(ctx, f.Sum(data), data); !errors.Is(err, context.Canceled) {
		t.Fatalf("Put = %v, want context.Canceled", err)
	}
}

// BenchmarkMemChunkStore measures the fake, the floor for store-backed
// benchmarks of callers:
//
//	go test -run '^$' -bench MemChunkStore -benchmem ./internal/backup/backuptest/
func BenchmarkMemChunkStore(b *testing.B) {
	data := backuptest.Payload("random", 1, 4<<20)
	b.Run("Put", func(b *testing.B) {
		m := backuptest.NewMemChunkStore()
		id := m.Sum(data)
		b.SetBytes(int64(len(data)))
		b.ReportAllocs()
		for b.Loop() {
			if _, err := m.Put(b.Context(), id, data); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("Get", func(b *testing.B) {
		m := backuptest.NewMemChunkStore()
		id := m.Sum(data)
		if _, err := m.Put(b.Context(), id, data); err != nil {
			b.Fatal(err)
		}
		buf := make([]byte, 0, len(data))
		b.SetBytes(int64(len(data)))
		b.ReportAllocs()
		for b.Loop() {
			var err error
			if buf, err = m.Get(b.Context(), id, buf); err != nil {
				b.Fatal(err)
			}
		}
	})
}
