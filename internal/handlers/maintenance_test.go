package handlers_test

import (
	"bytes"
	"context"
	"fmt"
	"io/fs"
	"math/rand/v2"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"

	"github.com/backstop-pve/backstop/internal/backup"
	"github.com/backstop-pve/backstop/internal/chunkstore"
	"github.com/backstop-pve/backstop/internal/secret"
	"github.com/backstop-pve/backstop/internal/testenv"
)

// GC, verify and accounting end to end: real qemu-nbd exports, Postgres and
// versitygw, whose directory the tests read (to count chunk objects and
// their sizes) and damage.

// newS3BucketServer is newS3TestServer that also returns the bucket's
// directory in versitygw's root.
func newS3BucketServer(t *testing.T) (*testServer, string) {
	t.Helper()
	s3 := testenv.S3(t)
	if s3.Dir == "" {
		testenv.Missing(t, testenv.PeerS3, "BACKSTOP_TEST_S3_DIR is not set")
	}
	bucket := testenv.Bucket()
	scfg := chunkstore.DefaultConfig()
	scfg.URL = "s3://" + bucket + "?endpoint=" + s3.Endpoint + "&insecure=1"
	scfg.AccessKey, scfg.SecretKey = s3.AccessKey, secret.String(s3.SecretKey)
	return newTestServerWith(t, scfg), filepath.Join(s3.Dir, bucket)
}

// guestImage is a disk image of a test guest: the raw bytes and the qcow2
// file qemu-nbd serves.
type guestImage struct {
	raw  []byte
	qcow string
}

// newImage makes a mixed image (random, zero and repeated blocks).
func newImage(t *testing.T, slots int, seed uint64) guestImage {
	t.Helper()
	raw := mixedImage(t, t.TempDir(), slots, 4096, seed)
	return imageFromRaw(t, raw)
}

// variant returns img with the given 4 MiB blocks replaced by fresh random
// data.
func variant(t *testing.T, img guestImage, seed uint64, blocks ...int) guestImage {
	t.Helper()
	b := bytes.Clone(img.raw)
	rng := rand.New(rand.NewPCG(seed, 5))
	for _, i := range blocks {
		for j := i * 4 * mib; j < (i+1)*4*mib; j++ {
			b[j] = byte(rng.Uint32())
		}
	}
	path := filepath.Join(t.TempDir(), fmt.Sprintf("variant-%d.raw", seed))
	if err := os.WriteFile(path, b, 0o600); err != nil {
		t.Fatal(err)
	}
	return imageFromRaw(t, path)
}

func imageFromRaw(t *testing.T, raw string) guestImage {
	t.Helper()
	b, err := os.ReadFile(raw)
	if err != nil {
		t.Fatal(err)
	}
	return guestImage{raw: b, qcow: toQcow2(t, raw, "4M")}
}

// backupImage backs img up in full as drive-scsi0 of a new snapshot of
// vmid in ns, and returns the snapshot name.
func (s *testServer) backupImage(token, ns string, vmid int, at int64, img guestImage) string {
	t := s.t
	t.Helper()
	r := s.doJSON("POST", "/api/v1/backups", token, map[string]any{
		"ns": ns, "storage": "bs", "vmid": vmid, "type": "qemu", "backup_time": at})
	wantStatus(t, r, http.StatusCreated)
	var b session
	r.json(t, &b)
	nbd := startQemuNBD(t, img.qcow, "drive-scsi0", false)
	defer nbd.stop()
	tv := s.waitTask(token, s.startPull(token, b.ID, map[string]any{"device": "drive-scsi0", "size": len(img.raw),
		"bitmap_mode": "none", "source": map[string]any{"uri": nbd.uri}}))
	if tv.State != "ok" {
		t.Fatalf("pull: %+v", tv)
	}
	s.commit(token, b.ID)
	return b.Name
}

// wantRaw downloads a snapshot's disk and compares it with img.
func (s *testServer) wantRaw(token, ns, name string, img guestImage) {
	s.t.Helper()
	code, _, got, err := s.getRaw(token, "/api/v1/snapshots/"+name+"/disks/drive-scsi0/raw?ns="+ns, "")
	if err != nil || code != http.StatusOK || !bytes.Equal(got, img.raw) {
		s.t.Fatalf("restore of %s/%s: %d, %d bytes (want %d), equal %v, %v", ns, name, code, len(got), len(img.raw),
			bytes.Equal(got, img.raw), err)
	}
}

// chunkFiles returns the chunk objects in versitygw's directory with their
// sizes (what the catalog calls stored size).
func chunkFiles(t *testing.T, bucketDir string) map[backup.ChunkID]int64 {
	t.Helper()
	out := map[backup.ChunkID]int64{}
	err := filepath.WalkDir(filepath.Join(bucketDir, "chunks"), func(p string, d fs.DirEntry, err error) error {
		if os.IsNotExist(err) {
			return nil
		}
		if err != nil || d.IsDir() {
			return err
		}
		id, perr := backup.ParseChunkID(d.Name())
		if perr != nil {
			return nil // not a chunk (versitygw's own files)
		}
		info, err := d.Info()
		if err != nil {
			return err
		}
		out[id] = info.Size()
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// indexChunks reads a snapshot's index objects and returns the distinct
// chunks it references.
func (s *testServer) indexChunks(ns, name string) []backup.ChunkID {
	s.t.Helper()
	ctx := context.Background()
	snap, err := s.catalog.SnapshotByName(ctx, ns, name)
	if err != nil {
		s.t.Fatal(err)
	}
	disks, err := s.catalog.ListDisks(ctx, snap.ID)
	if err != nil {
		s.t.Fatal(err)
	}
	var out []backup.ChunkID
	for _, d := range disks {
		b, err := s.store.GetObject(ctx, d.IndexKey)
		if err != nil {
			s.t.Fatal(err)
		}
		idx, err := backup.UnmarshalFixedIndex(b)
		if err != nil {
			s.t.Fatal(err)
		}
		out = append(out, idx.Refs()...)
	}
	return out
}

// startTask posts a maintenance request and waits for its task.
func (s *testServer) runTask(token, path string, body any) (taskView, string) {
	s.t.Helper()
	r := s.doJSON("POST", path, token, body)
	wantStatus(s.t, r, http.StatusAccepted)
	var tr struct {
		TaskID string `json:"task_id"`
	}
	r.json(s.t, &tr)
	tv := s.waitTask(token, tr.TaskID)
	r = s.do("GET", "/api/v1/tasks/"+tr.TaskID+"/log", token, "", nil)
	wantStatus(s.t, r, http.StatusOK)
	var log struct {
		Lines []struct {
			Text string `json:"text"`
		} `json:"lines"`
	}
	r.json(s.t, &log)
	var b strings.Builder
	for _, l := range log.Lines {
		b.WriteString(l.Text + "\n")
	}
	return tv, b.String()
}

var freedRE = regexp.MustCompile(`removed (\d+) chunks, freed (\d+) bytes`)

// gcFreed runs a GC with grace 0 and returns what its log says it removed.
func (s *testServer) gcFreed(token string) (chunks, bytes int64) {
	s.t.Helper()
	tv, log := s.runTask(token, "/api/v1/gc", map[string]any{"grace_seconds": 0})
	if tv.State != "ok" {
		s.t.Fatalf("gc: %+v\n%s", tv, log)
	}
	m := freedRE.FindStringSubmatch(log)
	if m == nil {
		s.t.Fatalf("gc log has no summary:\n%s", log)
	}
	c, _ := strconv.ParseInt(m[1], 10, 64)
	b, _ := strconv.ParseInt(m[2], 10, 64)
	return c, b
}

// TestGC_DeletesExactlyTheUnreferenced (issue #7, must show): after
// snapshots are deleted, GC over the API removes exactly the chunks no
// remaining snapshot references (objects counted in versitygw's directory)
// and every remaining snapshot restores byte for byte.
func TestGC_DeletesExactlyTheUnreferenced(t *testing.T) {
	s, dir := newS3BucketServer(t)
	bk := s.mustToken("backup")
	a := newImage(t, 6, 1)
	a2 := variant(t, a, 11, 0, 3)
	b := newImage(t, 5, 2)
	nA := s.backupImage(bk, "default", 100, 1764100000, a)
	nA2 := s.backupImage(bk, "default", 100, 1764200000, a2)
	nB := s.backupImage(bk, "default", 101, 1764100000, b)
	before := chunkFiles(t, dir)

	// Within the grace period nothing goes, deleted or not.
	wantStatus(t, s.do("DELETE", "/api/v1/snapshots/"+nA, bk, "", nil), http.StatusNoContent)
	wantStatus(t, s.do("DELETE", "/api/v1/snapshots/"+nB, bk, "", nil), http.StatusNoContent)
	tv, log := s.runTask(adminToken, "/api/v1/gc", nil)
	if tv.State != "ok" || !strings.Contains(log, "removed 0 chunks") || len(chunkFiles(t, dir)) != len(before) {
		t.Fatalf("gc with the default grace: %+v\n%s", tv, log)
	}
	wantProblem(t, s.doJSON("POST", "/api/v1/gc", bk, map[string]any{}), http.StatusForbidden, "forbidden")
	wantProblem(t, s.doJSON("POST", "/api/v1/gc", adminToken, map[string]any{"grace_seconds": -1}), http.StatusBadRequest, "bad_request")

	keep := map[backup.ChunkID]bool{}
	for _, id := range s.indexChunks("default", nA2) {
		keep[id] = true
	}
	var wantGone []backup.ChunkID
	var wantFreed int64
	for id, size := range before {
		if !keep[id] {
			wantGone = append(wantGone, id)
			wantFreed += size
		}
	}
	if len(wantGone) == 0 {
		t.Fatal("the deleted snapshots left nothing to collect; the test proves nothing")
	}
	chunks, freed := s.gcFreed(adminToken)
	after := chunkFiles(t, dir)
	if chunks != int64(len(wantGone)) || freed != wantFreed {
		t.Errorf("gc reports %d chunks, %d bytes; want %d chunks, %d bytes", chunks, freed, len(wantGone), wantFreed)
	}
	if len(after) != len(keep) {
		t.Errorf("%d chunk objects left, want the %d the remaining snapshot references", len(after), len(keep))
	}
	for id := range keep {
		if _, ok := after[id]; !ok {
			t.Errorf("referenced chunk %s was deleted", id)
		}
	}
	for _, id := range wantGone {
		if _, ok := after[id]; ok {
			t.Errorf("unreferenced chunk %s is still stored", id)
		}
	}
	if t.Failed() {
		t.FailNow()
	}
	s.wantRaw(bk, "default", nA2, a2)
	// A second run finds nothing more.
	if chunks, _ := s.gcFreed(adminToken); chunks != 0 {
		t.Fatalf("second gc removed %d chunks", chunks)
	}
	// The same content backed up again is stored again and restores.
	nB2 := s.backupImage(bk, "default", 101, 1764300000, b)
	s.wantRaw(bk, "default", nB2, b)
	s.wantRaw(bk, "default", nA2, a2)
}

// TestVerify_FindsCorruption (issue #7, must show): a chunk damaged on disk
// is found by verify, its snapshots are marked failed (also in listings),
// the next query incremental for the disk answers new, and a later backup
// with the same content repairs the chunk.
func TestVerify_FindsCorruption(t *testing.T) {
	s, dir := newS3BucketServer(t)
	bk := s.mustToken("backup")
	img := newImage(t, 5, 3)
	other := newImage(t, 3, 4)
	name := s.backupImage(bk, "default", 100, 1764100000, img)
	otherName := s.backupImage(bk, "default", 200, 1764100000, other)

	tv, log := s.runTask(adminToken, "/api/v1/verify", map[string]any{})
	if tv.State != "ok" || !strings.Contains(log, "verified 2 snapshots (0 failed)") {
		t.Fatalf("verify of a healthy repository: %+v\n%s", tv, log)
	}
	wantVerifyState(t, s, bk, name, "ok")

	// Damage one chunk of the first snapshot only, in the middle of its
	// object (past the envelope header).
	ids := s.indexChunks("default", name)
	otherIDs := map[backup.ChunkID]bool{}
	for _, id := range s.indexChunks("default", otherName) {
		otherIDs[id] = true
	}
	var victim backup.ChunkID
	for _, id := range ids {
		if !otherIDs[id] {
			victim = id
			break
		}
	}
	path := filepath.Join(dir, "chunks", victim.String()[:4], victim.String())
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	data[len(data)/2] ^= 0x40
	if err := os.WriteFile(path, data, 0o600); err != nil {
		t.Fatal(err)
	}

	tv, log = s.runTask(adminToken, "/api/v1/verify", map[string]any{"snapshot": name})
	if tv.State != "error" || !strings.Contains(log, name+" in default FAILED") || !strings.Contains(tv.Error, "1 of 1 snapshots failed") {
		t.Fatalf("verify of the damaged snapshot: %+v\n%s", tv, log)
	}
	wantVerifyState(t, s, bk, name, "failed")
	wantVerifyState(t, s, bk, otherName, "ok")

	// A failed snapshot is never an incremental base.
	sess := s.openBackup(bk, 100, "qemu", 1764200000)
	if got := s.queryIncremental(bk, sess.ID, "drive-scsi0", int64(len(img.raw))); got != "new" {
		t.Fatalf("query incremental after a failed verify: %q, want new", got)
	}
	wantStatus(t, s.doJSON("POST", "/api/v1/backups/"+sess.ID+"/finish", bk, map[string]any{"success": false}), http.StatusOK)
	// Restoring it fails rather than returning damaged bytes.
	if code, _, got, err := s.getRaw(bk, "/api/v1/snapshots/"+name+"/disks/drive-scsi0/raw", ""); err == nil && code == 200 && bytes.Equal(got, img.raw) {
		t.Fatalf("restore of a damaged snapshot returned the original bytes")
	}

	// The next backup of the same disk stores the damaged chunk again.
	repaired := s.backupImage(bk, "default", 100, 1764300000, img)
	if nb := s.snapshotNewBytes(bk, repaired); nb <= 0 {
		t.Fatalf("the backup after the damage stored %d new bytes; dedup trusted the bad chunk", nb)
	}
	s.wantRaw(bk, "default", repaired, img)
	tv, log = s.runTask(adminToken, "/api/v1/verify", map[string]any{"ns": "default"})
	if tv.State != "ok" || !strings.Contains(log, "verified 3 snapshots (0 failed)") {
		t.Fatalf("verify after the repair: %+v\n%s", tv, log)
	}
	wantVerifyState(t, s, bk, name, "ok")
	s.wantRaw(bk, "default", name, img)

	// Nothing was left unverified for a day, so this verifies nothing.
	if tv, log := s.runTask(adminToken, "/api/v1/verify", map[string]any{"older_than_days": 1}); tv.State != "ok" || !strings.Contains(log, "verifying 0 snapshots") {
		t.Fatalf("verify of snapshots not verified for a day: %+v\n%s", tv, log)
	}
	wantProblem(t, s.doJSON("POST", "/api/v1/verify", adminToken, map[string]any{"snapshot": "qemu-1-2020_01_01-00_00_00"}), http.StatusNotFound, "not_found")
	wantProblem(t, s.doJSON("POST", "/api/v1/verify", adminToken, map[string]any{"snapshot": "nonsense"}), http.StatusBadRequest, "bad_request")
}

func wantVerifyState(t *testing.T, s *testServer, token, name, want string) {
	t.Helper()
	r := s.do("GET", "/api/v1/snapshots?vmid="+strings.Split(name, "-")[1], token, "", nil)
	wantStatus(t, r, http.StatusOK)
	var list []struct {
		Name        string  `json:"name"`
		VerifyState string  `json:"verify_state"`
		VerifiedAt  *string `json:"verified_at"`
	}
	r.json(t, &list)
	for _, l := range list {
		if l.Name == name {
			if l.VerifyState != want || l.VerifiedAt == nil {
				t.Fatalf("%s: verify state %q (verified at %v), want %q", name, l.VerifyState, l.VerifiedAt, want)
			}
			return
		}
	}
	t.Fatalf("%s not listed", name)
}

// usageView is the JSON of the figures in GET /usage.
type usageView struct {
	Snapshots      int64 `json:"snapshots"`
	LogicalBytes   int64 `json:"logical_bytes"`
	NewBytes       int64 `json:"new_bytes"`
	Chunks         int64 `json:"chunks"`
	StoredBytes    int64 `json:"stored_bytes"`
	ExclusiveBytes int64 `json:"exclusive_bytes"`
}

// TestAccounting_EqualsRecount (issue #7, must show): every figure of GET
// /snapshots/{name}, GET /usage and GET /status equals a brute-force recount
// from the index objects and the chunk files, and deleting a snapshot (then
// GC) frees exactly its exclusive bytes.
func TestAccounting_EqualsRecount(t *testing.T) {
	s, dir := newS3BucketServer(t)
	bk := s.mustToken("backup")
	a := newImage(t, 6, 5)
	a2 := variant(t, a, 55, 1, 4)
	b := newImage(t, 4, 6)
	type snap struct {
		ns, name string
		vmid     int
		size     int64
		refs     []backup.ChunkID
	}
	var snaps []snap // in commit order
	add := func(ns string, vmid int, at int64, img guestImage) {
		name := s.backupImage(bk, ns, vmid, at, img)
		snaps = append(snaps, snap{ns: ns, name: name, vmid: vmid, size: int64(len(img.raw)), refs: s.indexChunks(ns, name)})
	}
	add("default", 100, 1764100000, a)
	add("default", 100, 1764200000, a2)
	add("default", 101, 1764100000, b)
	add("tenant", 100, 1764100000, a)
	add("tenant", 300, 1764100000, b)

	files := chunkFiles(t, dir)
	total := map[backup.ChunkID]int{}
	for _, sn := range snaps {
		for _, id := range sn.refs {
			total[id]++
		}
	}
	if len(total) != len(files) {
		t.Fatalf("%d chunk files, %d distinct chunks referenced", len(files), len(total))
	}
	// recount works out the figures of the snapshots sel selects.
	recount := func(sel func(snap) bool) usageView {
		var u usageView
		in := map[backup.ChunkID]int{}
		seen := map[backup.ChunkID]bool{}
		for _, sn := range snaps {
			for _, id := range sn.refs {
				if sel(sn) {
					in[id]++
					if !seen[id] {
						u.NewBytes += files[id]
					}
				}
				seen[id] = true
			}
			if sel(sn) {
				u.Snapshots++
				u.LogicalBytes += sn.size
			}
		}
		for id, n := range in {
			u.Chunks++
			u.StoredBytes += files[id]
			if n == total[id] {
				u.ExclusiveBytes += files[id]
			}
		}
		return u
	}
	for _, sn := range snaps {
		r := s.do("GET", "/api/v1/snapshots/"+sn.name+"?ns="+sn.ns, bk, "", nil)
		wantStatus(t, r, http.StatusOK)
		var got struct {
			Size           int64 `json:"size"`
			NewBytes       int64 `json:"new_bytes"`
			ExclusiveBytes int64 `json:"exclusive_bytes"`
		}
		r.json(t, &got)
		want := recount(func(o snap) bool { return o.ns == sn.ns && o.name == sn.name })
		if got.Size != want.LogicalBytes || got.NewBytes != want.NewBytes || got.ExclusiveBytes != want.ExclusiveBytes {
			t.Errorf("%s/%s: size %d, new %d, exclusive %d; recount %d, %d, %d", sn.ns, sn.name,
				got.Size, got.NewBytes, got.ExclusiveBytes, want.LogicalBytes, want.NewBytes, want.ExclusiveBytes)
		}
	}
	rd := s.mustToken("read", "default")
	for _, q := range []struct {
		ns   string
		vmid int
	}{{"default", 0}, {"default", 100}, {"default", 101}, {"tenant", 0}, {"tenant", 300}} {
		path := "/api/v1/usage?ns=" + q.ns
		if q.vmid != 0 {
			path += "&vmid=" + strconv.Itoa(q.vmid)
		}
		r := s.do("GET", path, adminToken, "", nil)
		wantStatus(t, r, http.StatusOK)
		var got struct {
			usageView
			Guests []struct {
				Vmid int    `json:"vmid"`
				Type string `json:"type"`
				usageView
			} `json:"guests"`
		}
		r.json(t, &got)
		want := recount(func(o snap) bool { return o.ns == q.ns && (q.vmid == 0 || o.vmid == q.vmid) })
		if got.usageView != want {
			t.Errorf("usage %s: %+v, recount %+v", path, got.usageView, want)
		}
		for _, g := range got.Guests {
			want := recount(func(o snap) bool { return o.ns == q.ns && o.vmid == g.Vmid })
			if g.usageView != want || g.Type != "qemu" {
				t.Errorf("usage %s guest %d: %+v, recount %+v", path, g.Vmid, g.usageView, want)
			}
		}
	}
	wantStatus(t, s.do("GET", "/api/v1/usage?ns=default", rd, "", nil), http.StatusOK)
	wantProblem(t, s.do("GET", "/api/v1/usage?ns=tenant", rd, "", nil), http.StatusForbidden, "forbidden")

	s.status.Refresh(context.Background())
	r := s.do("GET", "/api/v1/status", bk, "", nil)
	wantStatus(t, r, http.StatusOK)
	var st struct {
		LogicalBytes int64   `json:"logical_bytes"`
		StoredBytes  int64   `json:"stored_bytes"`
		Chunks       int64   `json:"chunks"`
		Snapshots    int64   `json:"snapshots"`
		DedupRatio   float64 `json:"dedup_ratio"`
	}
	r.json(t, &st)
	all := recount(func(snap) bool { return true })
	ratio := float64(all.LogicalBytes) / float64(all.StoredBytes)
	if st.LogicalBytes != all.LogicalBytes || st.StoredBytes != all.StoredBytes || st.Chunks != all.Chunks ||
		st.Snapshots != all.Snapshots || st.DedupRatio < ratio*0.999 || st.DedupRatio > ratio*1.001 {
		t.Errorf("status %+v; recount %+v, dedup ratio %.3f", st, all, ratio)
	}
	if t.Failed() {
		t.FailNow()
	}

	// What deleting a snapshot frees is its exclusive bytes: the variant
	// has chunks of its own, the others share theirs.
	for _, victim := range []snap{snaps[0], snaps[1]} {
		excl := recount(func(o snap) bool { return o.name == victim.name && o.ns == victim.ns }).ExclusiveBytes
		if victim.name == snaps[1].name && excl == 0 {
			t.Fatal("the variant has no exclusive chunks; the test proves nothing")
		}
		wantStatus(t, s.do("DELETE", "/api/v1/snapshots/"+victim.name+"?ns="+victim.ns, bk, "", nil), http.StatusNoContent)
		if _, freed := s.gcFreed(adminToken); freed != excl {
			t.Fatalf("deleting %s freed %d bytes; its exclusive bytes were %d", victim.name, freed, excl)
		}
		snaps = snaps[1:]
		total = map[backup.ChunkID]int{}
		for _, sn := range snaps {
			for _, id := range sn.refs {
				total[id]++
			}
		}
	}
}

// TestQuota: a backup in a namespace at its quota fails at the start with
// 507 and a detail naming both figures.
func TestQuota(t *testing.T) {
	s := newTestServer(t)
	bk := s.mustToken("backup")
	put := func(token string, body any) response {
		return s.doJSON("PUT", "/api/v1/namespaces/default", token, body)
	}
	wantProblem(t, put(bk, map[string]any{"quota_bytes": 1}), http.StatusForbidden, "forbidden")
	wantProblem(t, put(adminToken, map[string]any{}), http.StatusBadRequest, "bad_request")
	wantProblem(t, put(adminToken, map[string]any{"quota_bytes": -1}), http.StatusBadRequest, "bad_request")
	r := put(adminToken, map[string]any{"quota_bytes": 1})
	wantStatus(t, r, http.StatusOK)
	var ns struct {
		Name        string `json:"name"`
		QuotaBytes  *int64 `json:"quota_bytes"`
		StoredBytes int64  `json:"stored_bytes"`
	}
	r.json(t, &ns)
	if ns.Name != "default" || ns.QuotaBytes == nil || *ns.QuotaBytes != 1 || ns.StoredBytes != 0 {
		t.Fatalf("PUT namespace: %s", r.body)
	}
	name, _ := s.backedUpDisk(bk, 100, 3, 0) // under quota when it started
	stored := s.catalogStored("default")

	r = s.doJSON("POST", "/api/v1/backups", bk, map[string]any{"storage": "bs", "vmid": 100, "type": "qemu", "backup_time": 1764200000})
	wantProblem(t, r, http.StatusInsufficientStorage, "insufficient_storage")
	var p struct {
		Detail string `json:"detail"`
	}
	r.json(t, &p)
	if want := fmt.Sprintf("namespace default stores %d bytes and its quota is 1 bytes", stored); !strings.Contains(p.Detail, want) {
		t.Fatalf("507 detail %q, want it to say %q", p.Detail, want)
	}
	r = s.do("GET", "/api/v1/usage", bk, "", nil)
	wantStatus(t, r, http.StatusOK)
	var u struct {
		QuotaBytes  *int64 `json:"quota_bytes"`
		StoredBytes int64  `json:"stored_bytes"`
	}
	r.json(t, &u)
	if u.QuotaBytes == nil || *u.QuotaBytes != 1 || u.StoredBytes != stored {
		t.Fatalf("usage with a quota: %s", r.body)
	}
	// Other namespaces are not limited; removing the quota lifts it.
	r = s.doJSON("POST", "/api/v1/backups", bk, map[string]any{"ns": "other", "storage": "bs", "vmid": 100, "type": "qemu", "backup_time": 1764200000})
	wantStatus(t, r, http.StatusCreated)
	wantStatus(t, put(adminToken, map[string]any{"quota_bytes": nil}), http.StatusOK)
	wantStatus(t, s.doJSON("POST", "/api/v1/backups", bk, map[string]any{"storage": "bs", "vmid": 100, "type": "qemu", "backup_time": 1764200000}), http.StatusCreated)
	// Deleting snapshots brings a namespace back under its quota.
	big := stored + 1
	wantStatus(t, put(adminToken, map[string]any{"quota_bytes": big}), http.StatusOK)
	wantStatus(t, s.do("DELETE", "/api/v1/snapshots/"+name, bk, "", nil), http.StatusNoContent)
	wantStatus(t, put(adminToken, map[string]any{"quota_bytes": 1}), http.StatusOK)
	wantStatus(t, s.doJSON("POST", "/api/v1/backups", bk, map[string]any{"storage": "bs", "vmid": 100, "type": "qemu", "backup_time": 1764300000}), http.StatusCreated)
}

func (s *testServer) catalogStored(ns string) int64 {
	s.t.Helper()
	n, err := s.catalog.NamespaceStoredBytes(context.Background(), ns)
	if err != nil || n <= 0 {
		s.t.Fatalf("NamespaceStoredBytes(%s) = %d, %v", ns, n, err)
	}
	return n
}

// TestMaintenance_409WhileRunningElsewhere: while another replica holds
// the GC (or verify) lock, POST /gc (/verify) answers 409; once it is
// released, the task starts.
func TestMaintenance_409WhileRunningElsewhere(t *testing.T) {
	s := newTestServer(t)
	for _, kind := range []string{backup.TaskGC, backup.TaskVerify} {
		lock, ok, err := s.catalog.TryLock(context.Background(), kind)
		if err != nil || !ok {
			t.Fatalf("TryLock(%s): %v, %v", kind, ok, err)
		}
		wantProblem(t, s.doJSON("POST", "/api/v1/"+kind, adminToken, map[string]any{}), http.StatusConflict, "conflict")
		lock.Unlock()
		if tv, log := s.runTask(adminToken, "/api/v1/"+kind, map[string]any{}); tv.State != "ok" {
			t.Fatalf("%s after the lock was released: %+v\n%s", kind, tv, log)
		}
	}
}
