package backup_test

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/backstop-pve/backstop/internal/backup"
	"github.com/backstop-pve/backstop/internal/backup/backuptest"
)

// block returns one test chunk of content n (0: zeros).
func block(n int) []byte {
	b := make([]byte, testChunk)
	if n == 0 {
		return b
	}
	rng := rand.New(rand.NewPCG(uint64(n), 99))
	for i := 0; i < len(b); i += 8 {
		binary.LittleEndian.PutUint64(b[i:], rng.Uint64())
	}
	return b
}

// disk concatenates blocks.
func disk(blocks ...int) []byte {
	var out []byte
	for _, n := range blocks {
		out = append(out, block(n)...)
	}
	return out
}

var t0 = time.Date(2026, 11, 25, 22, 0, 0, 0, time.UTC)

func hour(i int) time.Time { return t0.Add(time.Duration(i) * time.Hour) }

// wantRemoved checks the task log's summary line.
func (e *env) wantRemoved(task backup.Task, chunks int) {
	e.t.Helper()
	log := e.taskLog(task.ID)
	if !strings.Contains(log, fmt.Sprintf("removed %d chunks", chunks)) {
		e.t.Fatalf("gc task log does not say it removed %d chunks:\n%s", chunks, log)
	}
}

// gcErr runs a GC with grace 0 and reports how it ended; for hooks, which
// run outside the test goroutine.
func (e *env) gcErr() (backup.Task, error) {
	grace := time.Duration(0)
	t, err := e.svc.StartGC(context.Background(), &grace)
	if err != nil {
		return t, err
	}
	deadline := time.Now().Add(time.Minute)
	for time.Now().Before(deadline) {
		got, err := e.cat.GetTask(context.Background(), t.ID)
		if err != nil {
			return t, err
		}
		if got.State == backup.TaskOK {
			return got, nil
		}
		if got.State == backup.TaskError {
			return got, errors.New(got.Error)
		}
		time.Sleep(10 * time.Millisecond)
	}
	return t, errors.New("gc did not finish")
}

// gate holds a hook until the test opens it; it opens by itself when the
// test ends, so a failed test does not leave work blocked forever.
type gate struct {
	ch   chan struct{}
	once sync.Once
}

func releaser(t *testing.T) *gate {
	g := &gate{ch: make(chan struct{})}
	t.Cleanup(g.open)
	return g
}

func (g *gate) open() { g.once.Do(func() { close(g.ch) }) }
func (g *gate) wait() { <-g.ch }

func (e *env) delete(s backup.Snapshot) {
	e.t.Helper()
	if err := e.svc.Delete(context.Background(), s); err != nil {
		e.t.Fatalf("delete %s: %v", s.Name, err)
	}
}

// TestGC_RemovesExactlyTheUnreferenced: GC keeps what the grace period
// covers, then removes exactly the chunks no snapshot references (objects
// counted in versitygw's directory), and every remaining snapshot restores
// byte for byte.
func TestGC_RemovesExactlyTheUnreferenced(t *testing.T) {
	e := newEnv(t)
	d1, d2, d3 := disk(1, 2, 3, 0, 4), disk(1, 2, 5, 6, 0), disk(7, 2, 8)
	s1 := e.backup(100, hour(1), d1)
	s2 := e.backup(100, hour(2), d2)
	s3 := e.backup(101, hour(1), d3)
	if n := len(e.objects()); n != 8 {
		t.Fatalf("%d chunk objects after the backups, want 8", n)
	}
	e.wantRemoved(e.gc(24*time.Hour), 0)
	e.delete(s1) // 3 and 4 are no longer referenced
	e.wantRemoved(e.gc(24*time.Hour), 0)
	if n := len(e.objects()); n != 8 {
		t.Fatalf("GC within the grace period removed objects: %d left, want 8", n)
	}
	e.wantRemoved(e.gc(0), 2)
	e.wantObjectsExactly("after deleting one snapshot")
	if n := len(e.objects()); n != 6 {
		t.Fatalf("%d chunk objects, want 6", n)
	}
	e.wantRestore(s2, d2)
	e.wantRestore(s3, d3)
	e.delete(s2)
	e.delete(s3)
	e.wantRemoved(e.gc(0), 6)
	if n := len(e.objects()); n != 0 {
		t.Fatalf("%d chunk objects left with no snapshot", n)
	}
	if st, err := e.cat.Stats(context.Background()); err != nil || st.Chunks != 0 || st.StoredBytes != 0 {
		t.Fatalf("Stats after GC of everything: %+v, %v", st, err)
	}
}

// TestGC_DedupHitOnChunkBeingDeleted: a backup meets chunks that GC has
// claimed. Dedup must not count them; the backup waits until GC is done
// with them and stores them afresh.
func TestGC_DedupHitOnChunkBeingDeleted(t *testing.T) {
	e := newEnv(t)
	data := disk(1, 2, 3)
	e.delete(e.backup(100, hour(1), data))
	claimed, looked := make(chan struct{}), make(chan struct{})
	release := releaser(t)
	var claimOnce, lookOnce sync.Once
	e.setHook(func(stage string) {
		switch stage {
		case "gc:claimed":
			claimOnce.Do(func() { close(claimed); release.wait() })
		case "pull:looked-up":
			lookOnce.Do(func() { close(looked) })
		}
	})
	grace := time.Duration(0)
	gcTask, err := e.svc.StartGC(context.Background(), &grace)
	if err != nil {
		t.Fatal(err)
	}
	<-claimed
	p, err := e.startBackup(200, hour(2), data, nil)
	if err != nil {
		t.Fatal(err)
	}
	<-looked
	time.Sleep(500 * time.Millisecond) // the pull now waits for GC to finish with the chunks
	if got, _ := e.cat.GetTask(context.Background(), p.task.ID); got.State != backup.TaskRunning {
		t.Fatalf("the pull did not wait for GC: %+v", got)
	}
	release.open()
	if done := e.waitTask(gcTask.ID); done.State != backup.TaskOK {
		t.Fatalf("gc: %+v", done)
	}
	e.wantRemoved(gcTask, 3)
	s2, err := e.finish(p)
	if err != nil {
		t.Fatal(err)
	}
	if s2.NewBytes == 0 {
		t.Fatalf("the backup stored nothing: it trusted chunks GC deleted")
	}
	e.wantRestore(s2, data)
	e.wantObjectsExactly("after the backup")
}

// TestGC_DedupHitBeforeClaim: a running backup found a chunk by dedup
// (touching it); GC, even with grace 0, must not take it, while it takes
// an unreferenced chunk the backup does not use.
func TestGC_DedupHitBeforeClaim(t *testing.T) {
	e := newEnv(t)
	e.delete(e.backup(100, hour(1), disk(1, 9)))
	var once sync.Once
	var gcTask backup.Task
	var gcErr error
	e.setHook(func(stage string) {
		if stage == "pull:looked-up" {
			once.Do(func() { gcTask, gcErr = e.gcErr() })
		}
	})
	data := disk(0, 1, 0)
	s2 := e.backup(200, hour(2), data)
	if gcErr != nil {
		t.Fatalf("gc during the backup: %v", gcErr)
	}
	e.wantRemoved(gcTask, 1) // block 9, not block 1
	if s2.NewBytes != 0 {
		t.Fatalf("the backup stored %d new bytes; block 1 should have been a dedup hit", s2.NewBytes)
	}
	e.wantRestore(s2, data)
	e.wantObjectsExactly("after the backup")
}

// TestGC_IncrementalBaseDeletedMidBackup: the base of a running incremental
// is deleted and GC runs (grace 0) before the incremental commits; GC must
// keep the base's chunks the incremental reuses.
func TestGC_IncrementalBaseDeletedMidBackup(t *testing.T) {
	e := newEnv(t)
	base := disk(1, 2, 3, 4)
	s1 := e.backup(100, hour(1), base)
	next := disk(1, 2, 5, 4)
	var once sync.Once
	var gcTask backup.Task
	var gcErr error
	e.setHook(func(stage string) {
		if stage == "pull:looked-up" {
			once.Do(func() {
				if err := e.svc.Delete(context.Background(), s1); err != nil {
					gcErr = err
					return
				}
				gcTask, gcErr = e.gcErr()
			})
		}
	})
	p, err := e.startBackup(100, hour(2), next, []backup.Extent{{Offset: 2 * testChunk, Length: testChunk}})
	if err != nil {
		t.Fatal(err)
	}
	s2, err := e.finish(p)
	if err != nil {
		t.Fatal(err)
	}
	if gcErr != nil {
		t.Fatalf("delete and gc during the backup: %v", gcErr)
	}
	e.wantRemoved(gcTask, 0)
	if _, err := e.cat.SnapshotByName(context.Background(), backup.DefaultNamespace, s1.Name); !errors.Is(err, backup.ErrNotFound) {
		t.Fatalf("the base was not deleted: %v", err)
	}
	e.wantRestore(s2, next)
	e.wantRemoved(e.gc(0), 1) // block 3, which only the deleted base had
	e.wantObjectsExactly("after the incremental")
	e.wantRestore(s2, next)
}

// TestGC_UploadInFlight: chunks reserved by a running backup, whose upload
// has not been recorded yet, are not collected.
func TestGC_UploadInFlight(t *testing.T) {
	e := newEnv(t)
	var once sync.Once
	var gcTask backup.Task
	var gcErr error
	e.setHook(func(stage string) {
		if stage == "pull:reserved" {
			once.Do(func() { gcTask, gcErr = e.gcErr() })
		}
	})
	data := disk(1, 2, 3)
	s := e.backup(100, hour(1), data)
	if gcErr != nil {
		t.Fatal(gcErr)
	}
	e.wantRemoved(gcTask, 0)
	e.wantRestore(s, data)
	e.wantObjectsExactly("after the backup")
}

// TestGC_AbandonedSession: an open session idle beyond the session timeout
// (a crashed backup) is discarded, and what it left (reserved chunks,
// uploaded or not) is collected; a younger one holds the cutoff.
func TestGC_AbandonedSession(t *testing.T) {
	ctx := context.Background()
	for _, tc := range []struct {
		name    string
		timeout time.Duration
		removed int
	}{{"young", time.Hour, 0}, {"abandoned", time.Millisecond, 2}} {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t, func(c *backup.ServiceConfig) { c.GC.SessionTimeout = tc.timeout })
			sess, err := e.cat.CreateSnapshot(ctx, backup.Snapshot{Namespace: "default", Storage: "backstop",
				VMID: 100, Type: backup.GuestQemu, BackupTime: hour(1)})
			if err != nil {
				t.Fatal(err)
			}
			// What a backup killed mid-upload leaves: two reserved chunks,
			// one of them stored.
			b1, b2 := block(1), block(2)
			id1, id2 := e.store.Sum(b1), e.store.Sum(b2)
			if err := e.cat.ReserveChunks(ctx, []backup.ChunkInfo{{ID: id1, Size: testChunk}, {ID: id2, Size: testChunk}}); err != nil {
				t.Fatal(err)
			}
			if _, err := e.store.Put(ctx, id1, b1); err != nil {
				t.Fatal(err)
			}
			time.Sleep(10 * time.Millisecond)
			task := e.gc(0)
			e.wantRemoved(task, tc.removed)
			_, err = e.cat.GetSnapshot(ctx, sess.ID)
			if tc.removed == 0 {
				if err != nil {
					t.Fatalf("young session: %v", err)
				}
				if len(e.objects()) != 1 {
					t.Fatalf("the upload of an open session was collected")
				}
				return
			}
			if !errors.Is(err, backup.ErrNotFound) {
				t.Fatalf("abandoned session still there: %v", err)
			}
			if !strings.Contains(e.taskLog(task.ID), "discarded abandoned backup session "+sess.ID) {
				t.Fatalf("task log does not name the discarded session:\n%s", e.taskLog(task.ID))
			}
			if n := len(e.objects()); n != 0 {
				t.Fatalf("%d objects left by the crashed backup", n)
			}
		})
	}
}

// TestGC_OneAtATime: a second GC, on this replica or another, is refused
// while one runs.
func TestGC_OneAtATime(t *testing.T) {
	e := newEnv(t)
	e.delete(e.backup(100, hour(1), disk(1)))
	claimed, release := make(chan struct{}), releaser(t)
	var once sync.Once
	e.setHook(func(stage string) {
		if stage == "gc:claimed" {
			once.Do(func() { close(claimed); release.wait() })
		}
	})
	grace := time.Duration(0)
	first, err := e.svc.StartGC(context.Background(), &grace)
	if err != nil {
		t.Fatal(err)
	}
	<-claimed
	_, err = e.svc.StartGC(context.Background(), &grace)
	if !errors.Is(err, backup.ErrConflict) {
		t.Fatalf("second GC: %v, want ErrConflict", err)
	}
	other := backup.NewService(slog.New(slog.DiscardHandler), backup.DefaultServiceConfig(), e.cat, e.store, e.store, e.disks)
	defer other.Close()
	if _, err := other.StartGC(context.Background(), &grace); !errors.Is(err, backup.ErrConflict) {
		t.Fatalf("GC on another replica: %v, want ErrConflict", err)
	}
	release.open()
	e.waitTask(first.ID)
	if _, err := other.StartGC(context.Background(), &grace); err != nil {
		t.Fatalf("GC once the first ended: %v", err)
	}
}

// TestGC_DeleteFails: when the objects cannot be deleted (here: deleted,
// but the answer is lost), the task fails with the reason and the chunks
// are released as bad: no dedup hit on them, and a backup that has their
// content stores them again.
func TestGC_DeleteFails(t *testing.T) {
	e := newEnv(t)
	data := disk(1, 2)
	e.delete(e.backup(100, hour(1), data))
	e.faulty.Inject(backuptest.MethodDelete, backuptest.Fault{Err: backup.ErrUnavailable, After: true})
	grace := time.Duration(0)
	task, err := e.svc.StartGC(context.Background(), &grace)
	if err != nil {
		t.Fatal(err)
	}
	if done := e.waitTask(task.ID); done.State != backup.TaskError || !strings.Contains(done.Error, "delete 2 chunk objects") {
		t.Fatalf("gc with a failing delete: %+v", done)
	}
	known, err := e.cat.KnownChunks(context.Background(), []backup.ChunkID{e.store.Sum(block(1)), e.store.Sum(block(2))})
	if err != nil || len(known) != 0 {
		t.Fatalf("KnownChunks after a failed delete: %v, %v; dedup must not trust them", known, err)
	}
	s := e.backup(100, hour(2), data)
	if s.NewBytes == 0 {
		t.Fatal("the backup did not store the chunks again")
	}
	e.wantRestore(s, data)
	e.wantRemoved(e.gc(0), 0)
	e.wantObjectsExactly("after the repair")
}

// TestGC_Randomized interleaves full and incremental backups (some of
// whose bases are deleted while they run), deletions and GC runs with
// grace 0, on a small pool of chunk contents so that dedup hits chunks GC
// is about to take. Every snapshot left must restore byte for byte, and a
// final GC must leave exactly the referenced chunks.
func TestGC_Randomized(t *testing.T) {
	e := newEnv(t)
	const writers, rounds, slots, pool = 4, 8, 6, 16
	var mu sync.Mutex
	want := map[string][]byte{} // snapshot id → content; guarded by mu
	snaps := map[string]backup.Snapshot{}
	var wg sync.WaitGroup
	errs := make(chan error, 1000)
	for w := range writers {
		wg.Go(func() {
			rng := rand.New(rand.NewPCG(uint64(w), 42))
			var latest *backup.Snapshot
			var content []byte
			var mine []backup.Snapshot
			for r := range rounds {
				next := make([]byte, 0, slots*testChunk)
				var dirty []backup.Extent
				for i := range slots {
					if content != nil && rng.IntN(3) > 0 {
						next = append(next, content[i*testChunk:(i+1)*testChunk]...)
						continue
					}
					next = append(next, block(rng.IntN(pool))...)
					dirty = append(dirty, backup.Extent{Offset: int64(i * testChunk), Length: testChunk})
				}
				incremental := latest != nil && len(dirty) > 0 && rng.IntN(2) == 0
				if !incremental {
					dirty = nil
				}
				p, err := e.startBackup(300+w, hour(r), next, dirty)
				if err != nil {
					errs <- fmt.Errorf("writer %d round %d: start: %w", w, r, err)
					return
				}
				if incremental && rng.IntN(2) == 0 {
					// Delete the base while the incremental runs.
					if err := e.svc.Delete(context.Background(), *latest); err != nil {
						errs <- err
						return
					}
					mu.Lock()
					delete(want, latest.ID)
					delete(snaps, latest.ID)
					mu.Unlock()
					mine = mine[:len(mine)-1]
				}
				s, err := e.finish(p)
				if err != nil {
					errs <- fmt.Errorf("writer %d round %d: %w", w, r, err)
					return
				}
				mu.Lock()
				want[s.ID], snaps[s.ID] = next, s
				mu.Unlock()
				latest, content = &s, next
				mine = append(mine, s)
				if len(mine) > 2 && rng.IntN(2) == 0 { // delete an older one
					i := rng.IntN(len(mine) - 1)
					if err := e.svc.Delete(context.Background(), mine[i]); err != nil {
						errs <- err
						return
					}
					mu.Lock()
					delete(want, mine[i].ID)
					delete(snaps, mine[i].ID)
					mu.Unlock()
					mine = append(mine[:i], mine[i+1:]...)
				}
			}
		})
	}
	stop := make(chan struct{})
	gcDone := make(chan int)
	go func() {
		runs := 0
		for {
			select {
			case <-stop:
				gcDone <- runs
				return
			default:
			}
			if _, err := e.gcErr(); err != nil {
				errs <- fmt.Errorf("gc: %w", err)
			}
			runs++
		}
	}()
	wg.Wait()
	close(stop)
	runs := <-gcDone
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if t.Failed() {
		t.FailNow()
	}
	e.gc(0)
	e.wantObjectsExactly("after the final GC")
	for id, s := range snaps {
		e.wantRestore(s, want[id])
	}
	t.Logf("%d snapshots left, %d GC runs, %d chunk objects", len(snaps), runs, len(e.objects()))
}
