package catalogtest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/backstop-pve/backstop/internal/backup"
)

// The contract of backup.MaintenanceCatalog: GC claims, locks, verify
// states, accounting and quotas.
var maintenanceTests = []struct {
	name string
	fn   func(t *testing.T, c backup.Catalog)
}{
	{"ClaimHidesChunks", testClaimHidesChunks},
	{"ClaimOnlyCollectable", testClaimOnlyCollectable},
	{"CutoffOpenSession", testCutoffOpenSession},
	{"ReserveTouches", testReserveTouches},
	{"ReleaseMarksBad", testReleaseMarksBad},
	{"StaleClaims", testStaleClaims},
	{"AbandonedSessions", testAbandonedSessions},
	{"TryLock", testTryLock},
	{"VerifyStates", testVerifyStates},
	{"FailSnapshotsReferencing", testFailSnapshotsReferencing},
	{"Accounting", testAccounting},
	{"Namespaces", testNamespaces},
	{"LastTask", testLastTask},
	{"GCRaces", testGCRaces},
}

// farFuture is a cutoff that every touch time is before.
var farFuture = time.Now().Add(100 * 365 * 24 * time.Hour)

func mustClaim(t *testing.T, c backup.Catalog, cutoff time.Time, limit int) []backup.ChunkID {
	t.Helper()
	got, err := c.ClaimChunks(t.Context(), cutoff, backup.ChunkID{}, limit)
	if err != nil {
		t.Fatalf("ClaimChunks: %v", err)
	}
	ids := make([]backup.ChunkID, len(got))
	for i, ci := range got {
		ids[i] = ci.ID
	}
	return sortedIDs(ids)
}

func sortedIDs(ids []backup.ChunkID) []backup.ChunkID {
	out := slices.Clone(ids)
	slices.SortFunc(out, func(a, b backup.ChunkID) int { return bytes.Compare(a[:], b[:]) })
	return slices.Compact(out)
}

func wantIDs(t *testing.T, what string, got, want []backup.ChunkID) {
	t.Helper()
	got, want = sortedIDs(got), sortedIDs(want)
	if !slices.Equal(got, want) {
		t.Fatalf("%s: got %d ids %.8x, want %d ids %.8x", what, len(got), got, len(want), want)
	}
}

// tick lets the clock move on, so that touch times before and after differ.
func tick() { time.Sleep(5 * time.Millisecond) }

func mustCutoff(t *testing.T, c backup.Catalog, grace time.Duration) time.Time {
	t.Helper()
	tick()
	cut, err := c.GCCutoff(t.Context(), grace)
	if err != nil {
		t.Fatalf("GCCutoff: %v", err)
	}
	tick()
	return cut
}

// testClaimHidesChunks: a claimed chunk is invisible to dedup, refused by
// commits, reservations and adds, until its row is forgotten; then it can
// be stored afresh.
func testClaimHidesChunks(t *testing.T, c backup.Catalog) {
	ctx := t.Context()
	ids := chunkIDs("claim", 3)
	mustAddChunks(t, c, ids)
	claimed := mustClaim(t, c, farFuture, 10)
	wantIDs(t, "claimed", claimed, ids)
	wantKnown(t, c, ids, nil)
	if again := mustClaim(t, c, farFuture, 10); len(again) != 0 {
		t.Fatalf("claimed twice: %.8x", again)
	}
	err := c.ReserveChunks(ctx, chunkInfos(append(chunkIDs("other", 1), ids[0])))
	wantKind(t, "ReserveChunks of a deleting chunk", err, backup.ErrChunksDeleting)
	wantKind(t, "ReserveChunks of a deleting chunk", err, backup.ErrConflict)
	wantKind(t, "AddChunks of a deleting chunk", c.AddChunks(ctx, chunkInfos(ids[1:2])), backup.ErrChunksDeleting)
	s := mustCreate(t, c, newSnapshot("default", backup.GuestQemu, 100, "backstop", t0))
	_, err = c.CommitSnapshot(ctx, s.ID, 1, 1, ids[:1])
	wantKind(t, "CommitSnapshot referencing a deleting chunk", err, backup.ErrInvalid)
	// Still stored until forgotten (the objects exist until GC deletes them).
	if st, err := c.Stats(ctx); err != nil || st.Chunks != 3 {
		t.Fatalf("Stats with deleting chunks: %+v, %v", st, err)
	}
	n, err := c.ForgetChunks(ctx, slices.Concat(ids[:2], []backup.ChunkID{chunkID("unknown")}))
	if err != nil || n != 2 {
		t.Fatalf("ForgetChunks = %d, %v; want 2", n, err)
	}
	// A chunk that is stored, not deleting, is never forgotten.
	mustAddChunks(t, c, chunkIDs("kept", 1))
	if n, err := c.ForgetChunks(ctx, chunkIDs("kept", 1)); err != nil || n != 0 {
		t.Fatalf("ForgetChunks of a stored chunk = %d, %v", n, err)
	}
	wantKind(t, "ReserveChunks of the one still deleting", c.ReserveChunks(ctx, chunkInfos(ids)), backup.ErrChunksDeleting)
	if _, err := c.ForgetChunks(ctx, ids[2:]); err != nil {
		t.Fatal(err)
	}
	if err := c.ReserveChunks(ctx, chunkInfos(ids)); err != nil {
		t.Fatalf("ReserveChunks after forget: %v", err)
	}
	wantKnown(t, c, ids, nil) // pending
	mustAddChunks(t, c, ids)
	mustCommit(t, c, s.ID, 1, ids)
}

// testClaimOnlyCollectable: only unreferenced chunks touched before the
// cutoff are claimed, in id order after the given one, up to the limit.
func testClaimOnlyCollectable(t *testing.T, c backup.Catalog) {
	ctx := t.Context()
	old := chunkIDs("old", 6)
	mustAddChunks(t, c, old)
	if err := c.ReserveChunks(ctx, chunkInfos(chunkIDs("old-pending", 2))); err != nil {
		t.Fatal(err)
	}
	old = append(old, chunkIDs("old-pending", 2)...)
	ref := mustCreate(t, c, newSnapshot("default", backup.GuestQemu, 100, "backstop", t0))
	mustCommit(t, c, ref.ID, 1, old[:2])
	cutoff := mustCutoff(t, c, 0)
	mustAddChunks(t, c, chunkIDs("new", 2))
	n, bytes, err := c.CountCollectable(ctx, cutoff)
	if err != nil || n != 6 || bytes != 1002+1003+1004+1005 {
		t.Fatalf("CountCollectable = %d, %d, %v; want 6 chunks (2 pending) of 4014 bytes", n, bytes, err)
	}
	want := sortedIDs(old[2:])
	got, err := c.ClaimChunks(ctx, cutoff, backup.ChunkID{}, 4)
	if err != nil || len(got) != 4 {
		t.Fatalf("ClaimChunks limit 4: %d, %v", len(got), err)
	}
	first := make([]backup.ChunkID, len(got))
	for i, ci := range got {
		first[i] = ci.ID
	}
	wantIDs(t, "first batch", first, want[:4])
	rest, err := c.ClaimChunks(ctx, cutoff, want[3], 10)
	if err != nil {
		t.Fatal(err)
	}
	restIDs := make([]backup.ChunkID, len(rest))
	for i, ci := range rest {
		restIDs[i] = ci.ID
	}
	wantIDs(t, "second batch", restIDs, want[4:])
	// Once the referencing snapshot is deleted its chunks are collectable.
	if err := c.DeleteSnapshot(ctx, "default", ref.Name); err != nil {
		t.Fatal(err)
	}
	wantIDs(t, "after delete", mustClaim(t, c, cutoff, 10), old[:2])
	wantIDs(t, "new chunks with a later cutoff", mustClaim(t, c, mustCutoff(t, c, 0), 10), chunkIDs("new", 2))
}

// testCutoffOpenSession is invariant 2 in the catalog: a chunk touched after
// an open session started (as a backup touches what it uses) is never
// claimed, however short the grace; once the session ends it is.
func testCutoffOpenSession(t *testing.T, c backup.Catalog) {
	ctx := t.Context()
	used, unused := chunkIDs("used", 2), chunkIDs("unused", 2)
	mustAddChunks(t, c, append(used, unused...))
	now := mustCutoff(t, c, 0)
	if day := mustCutoff(t, c, 24*time.Hour); now.Sub(day) < 24*time.Hour-time.Minute || now.Sub(day) > 24*time.Hour+time.Minute {
		t.Fatalf("GCCutoff(24h) = %v, GCCutoff(0) = %v", day, now)
	}
	s := mustCreate(t, c, newSnapshot("default", backup.GuestQemu, 100, "backstop", t0))
	tick()
	if _, err := c.KnownChunks(ctx, used); err != nil { // the backup's dedup hit
		t.Fatal(err)
	}
	cutoff := mustCutoff(t, c, 0)
	if !cutoff.Before(time.Now().Add(time.Minute)) || cutoff.After(s.CreatedAt.Add(time.Minute)) {
		t.Fatalf("GCCutoff with an open session = %v; session opened %v", cutoff, s.CreatedAt)
	}
	wantIDs(t, "claimed with a session open", mustClaim(t, c, cutoff, 10), unused)
	mustCommit(t, c, s.ID, 1, used)
	if err := c.DeleteSnapshot(ctx, "default", s.Name); err != nil {
		t.Fatal(err)
	}
	wantIDs(t, "claimed after the session ended", mustClaim(t, c, mustCutoff(t, c, 0), 10), used)
	if _, err := c.GCCutoff(ctx, -time.Second); !errors.Is(err, backup.ErrInvalid) {
		t.Fatalf("GCCutoff(-1s): %v, want ErrInvalid", err)
	}
}

// testReserveTouches: reserving touches rows that exist already, stored or
// bad, so GC leaves them alone while the upload runs.
func testReserveTouches(t *testing.T, c backup.Catalog) {
	ctx := t.Context()
	ids := chunkIDs("touch", 3)
	mustAddChunks(t, c, ids)
	if err := inspector(t, c).MarkChunksBad(ctx, ids[1:2]); err != nil {
		t.Fatal(err)
	}
	cutoff := mustCutoff(t, c, 0)
	if err := c.ReserveChunks(ctx, chunkInfos(ids[:2])); err != nil {
		t.Fatal(err)
	}
	wantIDs(t, "claimed after reserve", mustClaim(t, c, cutoff, 10), ids[2:])
	// Reserving a stored chunk does not make it pending.
	wantKnown(t, c, ids[:2], map[backup.ChunkID]bool{ids[0]: true})
}

// testReleaseMarksBad: a claim whose object delete failed is released as
// bad; dedup does not trust it until it is stored again.
func testReleaseMarksBad(t *testing.T, c backup.Catalog) {
	ctx := t.Context()
	ids := chunkIDs("release", 2)
	mustAddChunks(t, c, ids)
	mustClaim(t, c, farFuture, 10)
	if err := c.ReleaseChunks(ctx, ids[:1]); err != nil {
		t.Fatalf("ReleaseChunks: %v", err)
	}
	wantKnown(t, c, ids, nil)
	if err := c.ReserveChunks(ctx, chunkInfos(ids[:1])); err != nil {
		t.Fatalf("ReserveChunks after release: %v", err)
	}
	mustAddChunks(t, c, ids[:1])
	wantKnown(t, c, ids, map[backup.ChunkID]bool{ids[0]: true})
	// Released chunks are collectable again.
	if err := c.ReleaseChunks(ctx, ids[1:]); err != nil {
		t.Fatal(err)
	}
	wantIDs(t, "claimed again", mustClaim(t, c, farFuture, 10), ids)
}

func testStaleClaims(t *testing.T, c backup.Catalog) {
	ctx := t.Context()
	ids := chunkIDs("stale", 3)
	mustAddChunks(t, c, ids)
	mustClaim(t, c, farFuture, 2)
	if got, err := c.StaleClaims(ctx, time.Hour, 10); err != nil || len(got) != 0 {
		t.Fatalf("StaleClaims(1h) = %v, %v; the claims are fresh", got, err)
	}
	tick()
	got, err := c.StaleClaims(ctx, time.Millisecond, 10)
	if err != nil || len(got) != 2 {
		t.Fatalf("StaleClaims(1ms) = %d claims, %v; want 2", len(got), err)
	}
	if got[0].Size != 4<<20 || got[0].StoredSize < 1000 {
		t.Fatalf("StaleClaims returned %+v", got[0])
	}
}

func testAbandonedSessions(t *testing.T, c backup.Catalog) {
	ctx := t.Context()
	idle := mustCreate(t, c, newSnapshot("default", backup.GuestQemu, 100, "backstop", t0))
	busy := mustCreate(t, c, newSnapshot("default", backup.GuestQemu, 101, "backstop", t0))
	mustTask(t, c, backup.Task{Kind: "backup-disk", SnapshotID: busy.ID})
	mustSnapshot(t, c, newSnapshot("default", backup.GuestQemu, 102, "backstop", t0), 1)
	got, err := c.AbandonedSessions(ctx, time.Now().Add(time.Hour))
	if err != nil || len(got) != 1 || got[0].ID != idle.ID {
		t.Fatalf("AbandonedSessions = %+v, %v; want only the idle session", got, err)
	}
	if got, err := c.AbandonedSessions(ctx, time.Now().Add(-time.Hour)); err != nil || len(got) != 0 {
		t.Fatalf("AbandonedSessions an hour ago = %+v, %v", got, err)
	}
}

func testTryLock(t *testing.T, c backup.Catalog) {
	ctx := t.Context()
	// Names are per test database, but a backend may share locks across
	// databases: use names of this test only.
	name := fmt.Sprintf("test-%d", rand.Uint64())
	l, ok, err := c.TryLock(ctx, name)
	if err != nil || !ok {
		t.Fatalf("TryLock: %v, %v", ok, err)
	}
	if err := l.Check(ctx); err != nil {
		t.Fatalf("Check: %v", err)
	}
	if _, ok, err := c.TryLock(ctx, name); err != nil || ok {
		t.Fatalf("TryLock while held: %v, %v", ok, err)
	}
	l2, ok, err := c.TryLock(ctx, name+"-other")
	if err != nil || !ok {
		t.Fatalf("TryLock of another name: %v, %v", ok, err)
	}
	l2.Unlock()
	l.Unlock()
	l.Unlock() // idempotent
	if l.Check(ctx) == nil {
		t.Fatalf("Check after Unlock: nil")
	}
	l3, ok, err := c.TryLock(ctx, name)
	if err != nil || !ok {
		t.Fatalf("TryLock after Unlock: %v, %v", ok, err)
	}
	l3.Unlock()
}

func testVerifyStates(t *testing.T, c backup.Catalog) {
	ctx := t.Context()
	ids := chunkIDs("verify", 3)
	mustAddChunks(t, c, ids)
	a := mustCreate(t, c, newSnapshot("default", backup.GuestQemu, 100, "backstop", t0))
	mustCommit(t, c, a.ID, 1, []backup.ChunkID{ids[2], ids[0], ids[2]})
	b := mustSnapshot(t, c, newSnapshot("other", backup.GuestLXC, 200, "backstop", t0.Add(time.Hour)), 1)
	open := mustCreate(t, c, newSnapshot("default", backup.GuestQemu, 100, "backstop", t0.Add(2*time.Hour)))

	refs, err := c.SnapshotRefs(ctx, a.ID)
	if err != nil {
		t.Fatal(err)
	}
	wantIDs(t, "SnapshotRefs", refs, []backup.ChunkID{ids[0], ids[2]})
	if !slices.IsSortedFunc(refs, func(x, y backup.ChunkID) int { return bytes.Compare(x[:], y[:]) }) || len(refs) != 2 {
		t.Fatalf("SnapshotRefs not sorted and distinct: %.8x", refs)
	}
	_, err = c.SnapshotRefs(ctx, open.ID)
	wantKind(t, "SnapshotRefs of an open session", err, backup.ErrNotFound)

	all := func(f backup.VerifyFilter) []string {
		t.Helper()
		got, err := c.SnapshotsToVerify(ctx, f)
		if err != nil {
			t.Fatalf("SnapshotsToVerify(%+v): %v", f, err)
		}
		var out []string
		for _, v := range got {
			out = append(out, fmt.Sprintf("%s/%d", v.Name, v.Chunks))
		}
		return out
	}
	want := []string{a.Name + "/2", b.Name + "/0"}
	if got := all(backup.VerifyFilter{}); !slices.Equal(got, want) {
		t.Fatalf("SnapshotsToVerify(all) = %v, want %v (oldest first, no open sessions)", got, want)
	}
	if got := all(backup.VerifyFilter{Namespace: "other"}); !slices.Equal(got, want[1:]) {
		t.Fatalf("SnapshotsToVerify(ns other) = %v", got)
	}
	if got := all(backup.VerifyFilter{Namespace: "default", Name: a.Name}); !slices.Equal(got, want[:1]) {
		t.Fatalf("SnapshotsToVerify(name) = %v", got)
	}
	before := time.Now()
	if err := c.SetVerifyState(ctx, a.ID, backup.VerifyOK); err != nil {
		t.Fatalf("SetVerifyState: %v", err)
	}
	got, err := c.GetSnapshot(ctx, a.ID)
	if err != nil || got.VerifyState != backup.VerifyOK || got.VerifiedAt == nil || got.VerifiedAt.Before(before.Add(-time.Minute)) {
		t.Fatalf("snapshot after SetVerifyState: %+v, %v", got, err)
	}
	if got := all(backup.VerifyFilter{VerifiedBefore: before.Add(-time.Hour)}); !slices.Equal(got, want[1:]) {
		t.Fatalf("SnapshotsToVerify(not verified for an hour) = %v, want the never verified one", got)
	}
	if got := all(backup.VerifyFilter{VerifiedBefore: time.Now().Add(time.Hour)}); !slices.Equal(got, want) {
		t.Fatalf("SnapshotsToVerify(verified before in an hour) = %v", got)
	}
	if err := c.SetVerifyState(ctx, b.ID, backup.VerifyFailed); err != nil {
		t.Fatal(err)
	}
	if got, _ := c.SnapshotByName(ctx, "other", b.Name); got.VerifyState != backup.VerifyFailed {
		t.Fatalf("verify state %q, want failed", got.VerifyState)
	}
	wantKind(t, "SetVerifyState of an open session", c.SetVerifyState(ctx, open.ID, backup.VerifyOK), backup.ErrNotFound)
	wantKind(t, "SetVerifyState of a missing one", c.SetVerifyState(ctx, missingID, backup.VerifyOK), backup.ErrNotFound)
	wantKind(t, "SetVerifyState bad state", c.SetVerifyState(ctx, a.ID, "great"), backup.ErrInvalid)
}

func testFailSnapshotsReferencing(t *testing.T, c backup.Catalog) {
	ctx := t.Context()
	ids := chunkIDs("fail", 4)
	mustAddChunks(t, c, ids)
	a := mustCreate(t, c, newSnapshot("default", backup.GuestQemu, 100, "backstop", t0))
	mustCommit(t, c, a.ID, 1, ids[:2])
	b := mustCreate(t, c, newSnapshot("other", backup.GuestQemu, 100, "backstop", t0))
	mustCommit(t, c, b.ID, 1, ids[1:3])
	d := mustCreate(t, c, newSnapshot("default", backup.GuestQemu, 101, "backstop", t0))
	mustCommit(t, c, d.ID, 1, ids[2:])
	if got, err := c.FailSnapshotsReferencing(ctx, nil); err != nil || len(got) != 0 {
		t.Fatalf("FailSnapshotsReferencing(nil) = %v, %v", got, err)
	}
	got, err := c.FailSnapshotsReferencing(ctx, []backup.ChunkID{ids[0], chunkID("unknown")})
	if err != nil || len(got) != 1 || got[0].ID != a.ID || got[0].VerifyState != backup.VerifyFailed {
		t.Fatalf("FailSnapshotsReferencing(ids[0]) = %+v, %v; want a", got, err)
	}
	got, err = c.FailSnapshotsReferencing(ctx, ids[1:2])
	if err != nil || len(got) != 2 {
		t.Fatalf("FailSnapshotsReferencing(ids[1]) = %+v, %v; want a and b", got, err)
	}
	if s, _ := c.GetSnapshot(ctx, d.ID); s.VerifyState != backup.VerifyNone {
		t.Fatalf("unrelated snapshot has verify state %q", s.VerifyState)
	}
}

// usageCase is a small repository whose figures the test works out by
// brute force from the refs it committed.
type usageCase struct {
	size  map[backup.ChunkID]int64
	snaps []usageSnap
}

type usageSnap struct {
	ns   string
	typ  backup.GuestType
	vmid int
	size int64
	refs []backup.ChunkID
	id   string
}

// figures recounts what the catalog must report for the snapshots sel
// selects.
func (u *usageCase) figures(sel func(usageSnap) bool) backup.UsageFigures {
	var f backup.UsageFigures
	inSet, total := map[backup.ChunkID]int{}, map[backup.ChunkID]int{}
	for _, s := range u.snaps {
		for _, id := range sortedIDs(s.refs) {
			total[id]++
			if sel(s) {
				inSet[id]++
			}
		}
		if sel(s) {
			f.Snapshots++
			f.LogicalBytes += s.size
			f.NewBytes += s.size / 2 // mustCommit's new bytes
		}
	}
	for id, n := range inSet {
		f.Chunks++
		f.StoredBytes += u.size[id]
		if n == total[id] {
			f.ExclusiveBytes += u.size[id]
		}
	}
	return f
}

func testAccounting(t *testing.T, c backup.Catalog) {
	ctx := t.Context()
	rng := rand.New(rand.NewPCG(7, 7))
	ids := chunkIDs("acct", 40)
	u := &usageCase{size: map[backup.ChunkID]int64{}}
	infos := make([]backup.ChunkInfo, len(ids))
	for i, id := range ids {
		infos[i] = backup.ChunkInfo{ID: id, Size: 4 << 20, StoredSize: 1000 + rng.Int64N(1<<20)}
		u.size[id] = infos[i].StoredSize
	}
	if err := c.AddChunks(ctx, infos); err != nil {
		t.Fatal(err)
	}
	guests := []struct {
		ns   string
		typ  backup.GuestType
		vmid int
	}{{"default", backup.GuestQemu, 100}, {"default", backup.GuestLXC, 101}, {"default", backup.GuestQemu, 101},
		{"tenant", backup.GuestQemu, 100}} // in the order Usage lists guests
	for i := range 12 {
		g := guests[i%len(guests)]
		var refs []backup.ChunkID
		for range 1 + rng.IntN(12) {
			refs = append(refs, ids[rng.IntN(len(ids))])
		}
		s := usageSnap{ns: g.ns, typ: g.typ, vmid: g.vmid, size: int64(1+rng.IntN(100)) << 20, refs: refs}
		created := mustCreate(t, c, newSnapshot(g.ns, g.typ, g.vmid, "backstop", t0.Add(time.Duration(i)*time.Hour)))
		mustCommit(t, c, created.ID, s.size, refs)
		s.id = created.ID
		u.snaps = append(u.snaps, s)
	}
	// An open session counts for nothing.
	mustCreate(t, c, newSnapshot("default", backup.GuestQemu, 100, "backstop", t0.Add(99*time.Hour)))

	for _, s := range u.snaps {
		got, err := c.ExclusiveBytes(ctx, s.id)
		want := u.figures(func(o usageSnap) bool { return o.id == s.id }).ExclusiveBytes
		if err != nil || got != want {
			t.Fatalf("ExclusiveBytes(%s) = %d, %v; want %d", s.id, got, err, want)
		}
	}
	_, err := c.ExclusiveBytes(ctx, missingID)
	wantKind(t, "ExclusiveBytes of a missing snapshot", err, backup.ErrNotFound)

	for _, ns := range []string{"default", "tenant", "empty"} {
		for _, vmid := range []int{0, 100, 101} {
			got, err := c.Usage(ctx, ns, vmid)
			if err != nil {
				t.Fatalf("Usage(%s, %d): %v", ns, vmid, err)
			}
			want := u.figures(func(s usageSnap) bool { return s.ns == ns && (vmid == 0 || s.vmid == vmid) })
			wantEqual(t, fmt.Sprintf("Usage(%s, %d) totals", ns, vmid), got.UsageFigures, want)
			var wantGuests []backup.GuestUsage
			for _, g := range guests {
				if g.ns != ns || vmid != 0 && g.vmid != vmid {
					continue
				}
				f := u.figures(func(s usageSnap) bool { return s.ns == g.ns && s.vmid == g.vmid && s.typ == g.typ })
				wantGuests = append(wantGuests, backup.GuestUsage{VMID: g.vmid, Type: g.typ, UsageFigures: f})
			}
			wantEqual(t, fmt.Sprintf("Usage(%s, %d) guests", ns, vmid), got.Guests, wantGuests)
		}
		stored, err := c.NamespaceStoredBytes(ctx, ns)
		if want := u.figures(func(s usageSnap) bool { return s.ns == ns }).StoredBytes; err != nil || stored != want {
			t.Fatalf("NamespaceStoredBytes(%s) = %d, %v; want %d", ns, stored, err, want)
		}
	}
}

func testNamespaces(t *testing.T, c backup.Catalog) {
	ctx := t.Context()
	_, err := c.GetNamespace(ctx, "nowhere")
	wantKind(t, "GetNamespace of an unused one", err, backup.ErrNotFound)
	mustCreate(t, c, newSnapshot("used", backup.GuestQemu, 100, "backstop", t0))
	n, err := c.GetNamespace(ctx, "used")
	if err != nil || n.Name != "used" || n.QuotaBytes != nil || n.CreatedAt.IsZero() {
		t.Fatalf("GetNamespace(used) = %+v, %v", n, err)
	}
	quota := int64(5 << 30)
	n, err = c.SetNamespaceQuota(ctx, "fresh", &quota)
	if err != nil || n.Name != "fresh" || n.QuotaBytes == nil || *n.QuotaBytes != quota {
		t.Fatalf("SetNamespaceQuota(fresh) = %+v, %v", n, err)
	}
	if got, err := c.GetNamespace(ctx, "fresh"); err != nil || got.QuotaBytes == nil || *got.QuotaBytes != quota {
		t.Fatalf("GetNamespace(fresh) = %+v, %v", got, err)
	}
	if n, err = c.SetNamespaceQuota(ctx, "fresh", nil); err != nil || n.QuotaBytes != nil {
		t.Fatalf("SetNamespaceQuota(nil) = %+v, %v", n, err)
	}
	neg := int64(-1)
	_, err = c.SetNamespaceQuota(ctx, "fresh", &neg)
	wantKind(t, "SetNamespaceQuota(-1)", err, backup.ErrInvalid)
	_, err = c.SetNamespaceQuota(ctx, "bad name!", &quota)
	wantKind(t, "SetNamespaceQuota(bad name)", err, backup.ErrInvalid)
	list, err := c.ListNamespaces(ctx)
	if err != nil || len(list) != 2 || list[0].Name != "fresh" || list[1].Name != "used" {
		t.Fatalf("ListNamespaces = %+v, %v", list, err)
	}
}

func testLastTask(t *testing.T, c backup.Catalog) {
	ctx := t.Context()
	_, err := c.LastTask(ctx, "gc")
	wantKind(t, "LastTask with none", err, backup.ErrNotFound)
	mustTask(t, c, backup.Task{Kind: "gc"})
	tick()
	last := mustTask(t, c, backup.Task{Kind: "gc"})
	mustTask(t, c, backup.Task{Kind: "verify"})
	got, err := c.LastTask(ctx, "gc")
	if err != nil || got.ID != last.ID {
		t.Fatalf("LastTask(gc) = %+v, %v; want %s", got, err, last.ID)
	}
}

// testGCRaces runs writers (look up, reserve, "upload", add, commit),
// deleters and a collector (cutoff, claim, "delete objects", forget) on a
// small set of chunks at once, with a simulated object store. No committed
// snapshot may ever reference a chunk whose object the collector deleted
// after it was last uploaded (invariant 2), and every collected chunk must
// have been unreferenced.
func testGCRaces(t *testing.T, c backup.Catalog) {
	ctx := t.Context()
	ids := chunkIDs("race", 24)
	var mu sync.Mutex
	objects := map[backup.ChunkID]bool{} // guarded by mu: the simulated bucket
	var wg sync.WaitGroup
	var failures sync.Map
	fail := func(err error) { failures.Store(err.Error(), err) }
	stop := make(chan struct{})
	var committed sync.Map // snapshot id → refs
	for w := range 6 {
		wg.Go(func() {
			rng := rand.New(rand.NewPCG(uint64(w), 2))
			for r := 0; ; r++ {
				select {
				case <-stop:
					return
				default:
				}
				s, err := c.CreateSnapshot(ctx, newSnapshot("default", backup.GuestQemu, 1000+w,
					"backstop", t0.Add(time.Duration(r)*time.Second)))
				if err != nil {
					fail(err)
					return
				}
				refs := make([]backup.ChunkID, 1+rng.IntN(6))
				for i := range refs {
					refs[i] = ids[rng.IntN(len(ids))]
				}
				refs = sortedIDs(refs)
				if err := raceWrite(ctx, c, refs, &mu, objects); err != nil {
					fail(err)
					return
				}
				if _, err := c.CommitSnapshot(ctx, s.ID, 1, 1, refs); err != nil {
					fail(fmt.Errorf("commit: %w", err))
					return
				}
				committed.Store(s.ID, refs)
				if rng.IntN(3) > 0 {
					if err := c.DeleteSnapshot(ctx, "default", s.Name); err != nil {
						fail(err)
						return
					}
					committed.Delete(s.ID)
				}
			}
		})
	}
	// Race for 3 s, and on a loaded machine (CI) longer, up to 60 s, until
	// the collector has collected something: a run in which it never does
	// proves nothing.
	collected := 0
	start := time.Now()
	for time.Since(start) < 3*time.Second || (collected == 0 && time.Since(start) < time.Minute) {
		cutoff, err := c.GCCutoff(ctx, 0)
		if err != nil {
			t.Fatal(err)
		}
		claimed, err := c.ClaimChunks(ctx, cutoff, backup.ChunkID{}, 8)
		if err != nil {
			t.Fatal(err)
		}
		var batch []backup.ChunkID
		for _, ci := range claimed {
			batch = append(batch, ci.ID)
		}
		mu.Lock()
		for _, id := range batch {
			delete(objects, id)
		}
		mu.Unlock()
		if _, err := c.ForgetChunks(ctx, batch); err != nil {
			t.Fatal(err)
		}
		collected += len(batch)
	}
	close(stop)
	wg.Wait()
	failures.Range(func(_, v any) bool { t.Error(v); return true })
	committed.Range(func(k, v any) bool {
		for _, id := range v.([]backup.ChunkID) {
			mu.Lock()
			ok := objects[id]
			mu.Unlock()
			if !ok {
				t.Errorf("snapshot %s references chunk %.8x, whose object GC deleted", k, id)
			}
		}
		return true
	})
	// Nor may the catalog vouch for a chunk whose object is gone.
	known, err := c.KnownChunks(ctx, ids)
	if err != nil {
		t.Fatal(err)
	}
	for id := range known {
		if !objects[id] {
			t.Errorf("KnownChunks reports chunk %.8x, whose object GC deleted", id)
		}
	}
	if collected == 0 {
		t.Errorf("the collector never collected anything; the test proves nothing")
	}
	t.Logf("collected %d chunks", collected)
}

// raceWrite stores refs the way a backup does: look up, reserve the unknown
// ones (waiting while GC deletes them), upload, record.
func raceWrite(ctx context.Context, c backup.Catalog, refs []backup.ChunkID, mu *sync.Mutex, objects map[backup.ChunkID]bool) error {
	known, err := c.KnownChunks(ctx, refs)
	if err != nil {
		return fmt.Errorf("known: %w", err)
	}
	var todo []backup.ChunkID
	for _, id := range refs {
		if !known[id] {
			todo = append(todo, id)
		}
	}
	if len(todo) == 0 {
		return nil
	}
	for try := 0; ; try++ {
		err := c.ReserveChunks(ctx, chunkInfos(todo))
		if err == nil {
			break
		}
		if !errors.Is(err, backup.ErrChunksDeleting) || try > 1000 {
			return fmt.Errorf("reserve: %w", err)
		}
		time.Sleep(time.Millisecond)
	}
	mu.Lock()
	for _, id := range todo {
		objects[id] = true
	}
	mu.Unlock()
	if err := c.AddChunks(ctx, chunkInfos(todo)); err != nil {
		return fmt.Errorf("add: %w", err)
	}
	return nil
}
