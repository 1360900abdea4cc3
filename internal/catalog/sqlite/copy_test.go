package sqlitecat_test

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/backstop-pve/backstop/internal/backup"
	"github.com/backstop-pve/backstop/internal/catalog"
	sqlitecat "github.com/backstop-pve/backstop/internal/catalog/sqlite"
	"github.com/backstop-pve/backstop/internal/secret"
	"github.com/backstop-pve/backstop/internal/testenv"
)

// fixture is what fillCatalog stored, for the comparison to walk.
type fixture struct {
	tokens     []string
	jobs       []string
	snapshots  []string // every session id, open ones included
	tasks      []string
	namespaces []string
	chunks     []backup.ChunkID
	dirs       [][]byte
	paths      [][]byte
}

func cid(label string) backup.ChunkID { return sha256.Sum256([]byte(label)) }

// fillCatalog puts one of everything the catalog keeps into c, through the
// Catalog interface only: tokens, a job, namespaces with a quota,
// committed, open and discarded sessions with disks, archives, files and
// blobs, chunks in every state, tasks with logs, verify states.
func fillCatalog(t *testing.T, c backup.Catalog) fixture {
	t.Helper()
	ctx := t.Context()
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	var f fixture
	t0 := time.Date(2026, 11, 20, 21, 0, 0, 0, time.UTC)
	exp := t0.Add(720 * time.Hour)
	must(c.CreateToken(ctx, backup.Token{ID: "tok-admin", Name: "ops", Role: backup.RoleAdmin, CreatedAt: t0}, []byte("hash-1")))
	must(c.CreateToken(ctx, backup.Token{ID: "tok-pve", Name: "pve", Role: backup.RoleBackup,
		Namespaces: []string{"default", "tenant"}, CreatedAt: t0.Add(time.Second), ExpiresAt: &exp}, []byte("hash-2")))
	f.tokens = []string{"tok-admin", "tok-pve"}

	job, err := c.CreateJob(ctx, backup.Job{Node: "pve1", Storage: "backstop", StartTime: t0})
	must(err)
	_, err = c.FinishJob(ctx, job.ID)
	must(err)
	f.jobs = []string{job.ID}

	// A chunk GC is deleting: claimed while it is the only one.
	must(c.AddChunks(ctx, []backup.ChunkInfo{{ID: cid("doomed"), Size: 10, StoredSize: 11}}))
	if got, err := c.ClaimChunks(ctx, time.Now().Add(time.Hour), backup.ChunkID{}, 10); err != nil || len(got) != 1 {
		t.Fatalf("ClaimChunks = %v, %v", got, err)
	}
	var infos []backup.ChunkInfo
	for i := range 50 {
		infos = append(infos, backup.ChunkInfo{ID: cid(fmt.Sprint("c", i)), Size: 4 << 20, StoredSize: int64(1000 + i)})
	}
	must(c.AddChunks(ctx, infos))
	must(c.ReserveChunks(ctx, []backup.ChunkInfo{{ID: cid("pending"), Size: 5}}))
	must(c.MarkChunksBad(ctx, []backup.ChunkID{infos[49].ID}))
	f.chunks = []backup.ChunkID{cid("doomed"), cid("pending")}
	for _, ci := range infos {
		f.chunks = append(f.chunks, ci.ID)
	}
	ids := func(from, to int) []backup.ChunkID {
		var out []backup.ChunkID
		for _, ci := range infos[from:to] {
			out = append(out, ci.ID)
		}
		return out
	}

	quota := int64(7 << 30)
	_, err = c.SetNamespaceQuota(ctx, "tenant", &quota)
	must(err)

	// A VM backup with two disks, config and firewall (empty, not absent).
	vm, err := c.CreateSnapshot(ctx, backup.Snapshot{Namespace: "default", JobID: job.ID, Storage: "backstop",
		VMID: 100, Type: backup.GuestQemu, BackupTime: t0})
	must(err)
	must(c.PutSnapshotBlob(ctx, vm.ID, "config", []byte("cores: 2\nmemory: 2048\n")))
	must(c.PutSnapshotBlob(ctx, vm.ID, "firewall", []byte{}))
	for i, dev := range []string{"scsi0", "efidisk0"} {
		must(c.AddDisk(ctx, backup.Disk{SnapshotID: vm.ID, Device: dev, Size: int64(i+1) << 30, ChunkSize: 4 << 20,
			BitmapMode: "new", IndexKey: "idx/" + dev, IndexSum: sha256.Sum256([]byte(dev)), NewBytes: 123}))
	}
	vmTask, err := c.CreateTask(ctx, backup.Task{Kind: "backup-disk", Namespace: "default", SnapshotID: vm.ID, Total: 9})
	must(err)
	must(c.AppendTaskLog(ctx, vmTask.ID, "scsi0: 1 GiB", "done \xff"))
	must(c.UpdateTaskProgress(ctx, vmTask.ID, 9, 9))
	must(c.FinishTask(ctx, vmTask.ID, backup.TaskOK, ""))
	_, err = c.CommitSnapshot(ctx, vm.ID, 3<<30, 1<<30, ids(0, 30))
	must(err)
	must(c.PutSnapshotBlob(ctx, vm.ID, "log", []byte("INFO: done\n")))
	must(c.SetVerifyState(ctx, vm.ID, backup.VerifyOK))
	notes, protected := "before upgrade", true
	_, err = c.UpdateSnapshotMeta(ctx, "default", vm.Name, &notes, &protected)
	must(err)

	// A container backup with an archive and its file catalog.
	ct, err := c.CreateSnapshot(ctx, backup.Snapshot{Namespace: "tenant", Storage: "backstop",
		VMID: 200, Type: backup.GuestLXC, BackupTime: t0.Add(time.Hour)})
	must(err)
	files := []backup.FileEntry{
		{Path: []byte("/"), Type: backup.FileDir, Mode: 0o755, ModTime: t0},
		{Path: []byte("/etc"), Type: backup.FileDir, Mode: 0o755, ModTime: t0, Offset: 512, MetaOffset: 10},
		{Path: []byte("/etc/hosts"), Type: backup.FileRegular, Size: 42, Mode: 0o644, UID: 1, GID: 2,
			ModTime: time.Unix(1700000000, 123456789).UTC(), Offset: 1024, MetaOffset: 20, PayloadOffset: 30, VolatileOffset: 40},
		{Path: []byte("/etc/caf\xe9"), Type: backup.FileSymlink, LinkTarget: []byte("hosts"), ModTime: t0, Offset: 2048},
		{Path: []byte("/etc/hosts"), Type: backup.FileRegular, Size: 43, ModTime: t0, Offset: 4096}, // later entry wins
	}
	must(c.AddFiles(ctx, ct.ID, "root.pxar", files))
	must(c.AddArchive(ctx, backup.Archive{SnapshotID: ct.ID, Name: "root.pxar", Size: 1 << 20, IndexKey: "idx/root",
		IndexSum: sha256.Sum256([]byte("root")), Files: int64(len(files)), NewBytes: 77}))
	_, err = c.CommitSnapshot(ctx, ct.ID, 1<<20, 77, ids(20, 40))
	must(err)
	if _, err := c.FailSnapshotsReferencing(ctx, ids(39, 40)); err != nil {
		t.Fatal(err)
	}
	f.dirs = [][]byte{[]byte("/"), []byte("/etc")}
	f.paths = [][]byte{[]byte("/etc/hosts"), []byte("/etc/caf\xe9"), []byte("/etc")}

	// An open session with a running task, and a discarded one.
	open, err := c.CreateSnapshot(ctx, backup.Snapshot{Namespace: "default", Storage: "backstop",
		VMID: 101, Type: backup.GuestQemu, BackupTime: t0.Add(2 * time.Hour)})
	must(err)
	openTask, err := c.CreateTask(ctx, backup.Task{Kind: "backup-disk", Namespace: "default", SnapshotID: open.ID})
	must(err)
	must(c.AppendTaskLog(ctx, openTask.ID, "pulling"))
	gone, err := c.CreateSnapshot(ctx, backup.Snapshot{Namespace: "default", Storage: "backstop",
		VMID: 102, Type: backup.GuestQemu, BackupTime: t0.Add(3 * time.Hour)})
	must(err)
	must(c.DiscardSnapshot(ctx, gone.ID, "nbd: connection reset"))
	gc, err := c.CreateTask(ctx, backup.Task{Kind: "gc"})
	must(err)
	must(c.FinishTask(ctx, gc.ID, backup.TaskError, "store unreachable"))

	f.snapshots = []string{vm.ID, ct.ID, open.ID, gone.ID}
	f.tasks = []string{vmTask.ID, openTask.ID, gc.ID}
	f.namespaces = []string{"default", "tenant", "nowhere"}
	return f
}

// readAll reads back everything fillCatalog stored, through the Catalog
// interface and the Inspector, as one comparable value per call.
func readAll(t *testing.T, c backup.Catalog, f fixture) map[string]any {
	t.Helper()
	ctx := t.Context()
	out := map[string]any{}
	put := func(key string, v any, err error) {
		if err != nil && !errors.Is(err, backup.ErrNotFound) {
			t.Fatalf("%s: %v", key, err)
		}
		if err != nil {
			v = "not found"
		}
		out[key] = v
	}
	v, err := c.ListTokens(ctx)
	put("ListTokens", v, err)
	for _, id := range f.tokens {
		tok, hash, err := c.TokenSecret(ctx, id)
		put("TokenSecret "+id, []any{tok, hash}, err)
	}
	for _, id := range f.jobs {
		j, err := c.GetJob(ctx, id)
		put("GetJob "+id, j, err)
	}
	ns, err := c.ListNamespaces(ctx)
	put("ListNamespaces", ns, err)
	for _, n := range f.namespaces {
		l, err := c.ListSnapshots(ctx, n, 0, "")
		put("ListSnapshots "+n, l, err)
		u, err := c.Usage(ctx, n, 0)
		put("Usage "+n, u, err)
		b, err := c.NamespaceStoredBytes(ctx, n)
		put("NamespaceStoredBytes "+n, b, err)
		r, err := c.ListBackupRuns(ctx, backup.BackupRunFilter{Namespace: n})
		put("ListBackupRuns "+n, r, err)
	}
	for _, id := range f.snapshots {
		s, err := c.GetSnapshot(ctx, id)
		put("GetSnapshot "+id, s, err)
		for _, kind := range []string{"config", "firewall", "log"} {
			b, err := c.GetSnapshotBlob(ctx, id, kind)
			put("blob "+kind+" "+id, b, err)
		}
		d, err := c.ListDisks(ctx, id)
		put("ListDisks "+id, d, err)
		a, err := c.ListArchives(ctx, id)
		put("ListArchives "+id, a, err)
		refs, err := c.SnapshotRefs(ctx, id)
		put("SnapshotRefs "+id, refs, err)
		x, err := c.ExclusiveBytes(ctx, id)
		put("ExclusiveBytes "+id, x, err)
		tl, err := c.ListTasks(ctx, id)
		put("ListTasks "+id, tl, err)
		for _, dir := range f.dirs {
			l, err := c.ListFiles(ctx, id, dir)
			put(fmt.Sprintf("ListFiles %s %q", id, dir), l, err)
		}
		for _, p := range f.paths {
			e, err := c.StatFile(ctx, id, p)
			put(fmt.Sprintf("StatFile %s %q", id, p), e, err)
		}
	}
	for _, id := range f.tasks {
		task, err := c.GetTask(ctx, id)
		put("GetTask "+id, task, err)
		l, err := c.TaskLog(ctx, id, 0)
		put("TaskLog "+id, l, err)
	}
	ft, err := c.FindTasks(ctx, backup.TaskFilter{})
	put("FindTasks", ft, err)
	refs, err := c.(interface {
		ChunkRefs(context.Context, []backup.ChunkID) (map[backup.ChunkID]int64, error)
	}).ChunkRefs(ctx, f.chunks)
	put("ChunkRefs", refs, err)
	known, err := c.KnownChunks(ctx, f.chunks)
	put("KnownChunks", known, err)
	st, err := c.Stats(ctx)
	put("Stats", st, err)
	n, b, err := c.CountCollectable(ctx, time.Now().Add(time.Hour))
	put("CountCollectable", []int64{n, b}, err)
	claims, err := c.StaleClaims(ctx, 0, 100)
	put("StaleClaims", claims, err)
	verify, err := c.SnapshotsToVerify(ctx, backup.VerifyFilter{})
	put("SnapshotsToVerify", verify, err)
	last, err := c.LastTask(ctx, "gc")
	put("LastTask gc", last, err)
	return out
}

// emptyToNil makes nil and empty slices and maps alike, as JSON-ish
// listings treat them.
func emptyToNil(v reflect.Value) reflect.Value {
	switch v.Kind() {
	case reflect.Interface:
		if v.IsNil() {
			return v
		}
		return emptyToNil(v.Elem())
	case reflect.Slice, reflect.Map:
		if v.Len() == 0 {
			return reflect.Zero(v.Type())
		}
		if v.Kind() == reflect.Slice {
			c := reflect.MakeSlice(v.Type(), v.Len(), v.Len())
			for i := range v.Len() {
				c.Index(i).Set(emptyToNil(v.Index(i)))
			}
			return c
		}
	case reflect.Struct:
		c := reflect.New(v.Type()).Elem()
		c.Set(v)
		for i := range v.NumField() {
			if v.Type().Field(i).IsExported() {
				c.Field(i).Set(emptyToNil(v.Field(i)))
			}
		}
		return c
	}
	return v
}

func TestCopyToPostgres(t *testing.T) {
	dsn := secret.String(testenv.PostgresDSN(t))
	src := newTestStore(t)
	f := fillCatalog(t, src)
	before := readAll(t, src, f)

	report, err := sqlitecat.CopyToPostgres(t.Context(), src, dsn, testLogger(t))
	if err != nil {
		t.Fatalf("CopyToPostgres: %v", err)
	}
	rows := map[string]int64{}
	for _, tc := range report.Tables {
		rows[tc.Name] = tc.Rows
	}
	want := map[string]int64{"namespaces": 2, "tokens": 2, "jobs": 1, "snapshots": 3, "disks": 2, "archives": 1,
		"files": 5, "chunks": 52, "tasks": 3, "task_log": 3, "backup_runs": 4}
	if !reflect.DeepEqual(rows, want) {
		t.Fatalf("copied rows %v, want %v", rows, want)
	}

	dst, err := catalog.Open(t.Context(), catalog.DefaultConfig(dsn), testLogger(t))
	if err != nil {
		t.Fatalf("open the Postgres catalog: %v", err)
	}
	t.Cleanup(dst.Close)
	after := readAll(t, dst, f)
	for key, w := range before {
		g := after[key]
		if !reflect.DeepEqual(emptyToNil(reflect.ValueOf(g)).Interface(), emptyToNil(reflect.ValueOf(w)).Interface()) {
			t.Errorf("%s after the copy:\n got %+v\nwant %+v", key, g, w)
		}
	}
	// The readings cover what they should: a sample of them is not empty.
	for _, key := range []string{"StatFile " + f.snapshots[1] + ` "/etc/hosts"`, "ChunkRefs", "TaskLog " + f.tasks[0],
		"ListBackupRuns default", "Usage tenant"} {
		if v, ok := before[key]; !ok || v == "not found" {
			t.Errorf("%s read nothing: %v", key, v)
		}
	}

	// The copy is usable: Postgres goes on where SQLite stopped.
	mid := before["ChunkRefs"].(map[backup.ChunkID]int64)
	if mid[cid("c0")] != 1 || mid[cid("c25")] != 2 {
		t.Fatalf("refs before the copy: %v", mid)
	}
	if err := dst.DeleteSnapshot(t.Context(), "tenant", before["ListSnapshots tenant"].([]backup.Snapshot)[0].Name); err != nil {
		t.Fatalf("DeleteSnapshot after the copy: %v", err)
	}
	got, err := dst.ChunkRefs(t.Context(), []backup.ChunkID{cid("c25")})
	if err != nil || got[cid("c25")] != 1 {
		t.Fatalf("refs after deleting a copied snapshot: %v, %v", got, err)
	}

	// A second copy into the same database is refused: nothing is merged.
	_, err = sqlitecat.CopyToPostgres(t.Context(), src, dsn, testLogger(t))
	if !errors.Is(err, backup.ErrConflict) || !strings.Contains(err.Error(), "not empty") {
		t.Fatalf("second CopyToPostgres: %v, want ErrConflict (not empty)", err)
	}
}

// TestCopyToPostgres_RefusesTokens: a target with only a token (a server
// started on it and an admin token created) is not empty either.
func TestCopyToPostgres_RefusesTokens(t *testing.T) {
	dsn := secret.String(testenv.PostgresDSN(t))
	dst, err := catalog.Open(t.Context(), catalog.DefaultConfig(dsn), testLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	defer dst.Close()
	if err := dst.CreateToken(t.Context(), backup.Token{ID: "t1", Name: "x", Role: backup.RoleAdmin}, []byte("h")); err != nil {
		t.Fatal(err)
	}
	src := newTestStore(t)
	snap, err := src.CreateSnapshot(t.Context(), backup.Snapshot{Namespace: "default", Storage: "s", VMID: 100,
		Type: backup.GuestQemu, BackupTime: time.Now()})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := src.CommitSnapshot(t.Context(), snap.ID, 1, 1, nil); err != nil {
		t.Fatal(err)
	}
	_, err = sqlitecat.CopyToPostgres(t.Context(), src, dsn, testLogger(t))
	if !errors.Is(err, backup.ErrConflict) || !strings.Contains(err.Error(), "tokens") {
		t.Fatalf("CopyToPostgres into a catalog with a token: %v, want ErrConflict naming tokens", err)
	}
	if got, err := dst.ListSnapshots(t.Context(), "default", 0, ""); err != nil || len(got) != 0 {
		t.Fatalf("snapshots after a refused copy: %v, %v", got, err)
	}
	if tok, err := dst.ListTokens(t.Context()); err != nil || len(tok) != 1 {
		t.Fatalf("tokens after a refused copy: %v, %v", tok, err)
	}
}
