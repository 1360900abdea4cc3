package main

import (
	"bytes"
	"errors"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/backstop-pve/backstop/internal/backup"
	"github.com/backstop-pve/backstop/internal/catalog"
	sqlitecat "github.com/backstop-pve/backstop/internal/catalog/sqlite"
	"github.com/backstop-pve/backstop/internal/secret"
	"github.com/backstop-pve/backstop/internal/testenv"
)

// TestMigrateCatalog runs `server migrate-catalog` on an embedded catalog
// in $BACKSTOP_DATA_DIR: the Postgres catalog then holds the same
// snapshot, chunk references and token, and a second run is refused.
func TestMigrateCatalog(t *testing.T) {
	dsn := testenv.PostgresDSN(t)
	dir := t.TempDir()
	ctx := t.Context()
	src, err := sqlitecat.Open(ctx, sqlitecat.DefaultConfig(filepath.Join(dir, "catalog.db")), nil)
	if err != nil {
		t.Fatal(err)
	}
	ids := []backup.ChunkID{{1}, {2}, {3}}
	infos := []backup.ChunkInfo{{ID: ids[0], Size: 10, StoredSize: 11}, {ID: ids[1], Size: 20, StoredSize: 21},
		{ID: ids[2], Size: 30, StoredSize: 31}}
	if err := src.AddChunks(ctx, infos); err != nil {
		t.Fatal(err)
	}
	snap, err := src.CreateSnapshot(ctx, backup.Snapshot{Namespace: "default", Storage: "backstop", VMID: 100,
		Type: backup.GuestQemu, BackupTime: time.Date(2026, 11, 25, 22, 0, 0, 0, time.UTC)})
	if err != nil {
		t.Fatal(err)
	}
	want, err := src.CommitSnapshot(ctx, snap.ID, 1<<30, 60, ids[:2])
	if err != nil {
		t.Fatal(err)
	}
	if err := src.CreateToken(ctx, backup.Token{ID: "admin1", Name: "ops", Role: backup.RoleAdmin}, []byte("hash")); err != nil {
		t.Fatal(err)
	}
	if err := src.Close(); err != nil {
		t.Fatal(err)
	}

	env := map[string]string{"BACKSTOP_DATA_DIR": dir, "BACKSTOP_DATABASE_URL": dsn, "BACKSTOP_LOG_LEVEL": "warn"}
	var stdout, stderr bytes.Buffer
	if err := runMigrateCatalog(ctx, nil, func(k string) string { return env[k] }, &stdout, &stderr); err != nil {
		t.Fatalf("migrate-catalog: %v\n%s", err, stderr.String())
	}
	if out := stdout.String(); !strings.Contains(out, "copied 7 rows") || !strings.Contains(out, "chunks") {
		t.Fatalf("output:\n%s", out)
	}

	dst, err := catalog.Open(ctx, catalog.DefaultConfig(secret.String(dsn)), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer dst.Close()
	got, err := dst.SnapshotByName(ctx, "default", want.Name)
	if err != nil || !snapshotsEqual(got, want) {
		t.Fatalf("snapshot in Postgres: %+v, %v; want %+v", got, err, want)
	}
	refs, err := dst.ChunkRefs(ctx, ids)
	if err != nil || refs[ids[0]] != 1 || refs[ids[1]] != 1 || refs[ids[2]] != 0 || len(refs) != 3 {
		t.Fatalf("chunk refs in Postgres: %v, %v", refs, err)
	}
	if _, hash, err := dst.TokenSecret(ctx, "admin1"); err != nil || string(hash) != "hash" {
		t.Fatalf("token in Postgres: %q, %v", hash, err)
	}
	if st, err := dst.Stats(ctx); err != nil || st.Snapshots != 1 || st.Chunks != 3 || st.StoredBytes != 63 {
		t.Fatalf("stats in Postgres: %+v, %v", st, err)
	}

	// Again: the target is not empty any more.
	err = runMigrateCatalog(ctx, []string{"--from", filepath.Join(dir, "catalog.db"), "--to", dsn},
		func(string) string { return "" }, &stdout, &stderr)
	if !errors.Is(err, backup.ErrConflict) {
		t.Fatalf("second migrate-catalog: %v, want ErrConflict", err)
	}
	if strings.Contains(err.Error(), dsn) {
		t.Fatalf("the error shows the DSN: %v", err)
	}
}

func snapshotsEqual(a, b backup.Snapshot) bool {
	eqTime := func(x, y *time.Time) bool { return x == nil && y == nil || x != nil && y != nil && x.Equal(*y) }
	a2, b2 := a, b
	a2.VerifiedAt, a2.CommittedAt, b2.VerifiedAt, b2.CommittedAt = nil, nil, nil, nil
	return a2 == b2 && eqTime(a.VerifiedAt, b.VerifiedAt) && eqTime(a.CommittedAt, b.CommittedAt)
}

func TestMigrateCatalog_Errors(t *testing.T) {
	dir := t.TempDir()
	for _, tc := range []struct {
		name string
		args []string
		env  map[string]string
		want string
	}{
		{"no source", nil, map[string]string{"BACKSTOP_DATABASE_URL": "postgres://x"}, "--from or BACKSTOP_DATA_DIR is required"},
		{"no target", []string{"--from", filepath.Join(dir, "c.db")}, nil, "--to or BACKSTOP_DATABASE_URL is required"},
		{"missing file", nil, map[string]string{"BACKSTOP_DATA_DIR": dir, "BACKSTOP_DATABASE_URL": "postgres://x"},
			"no embedded catalog at " + filepath.Join(dir, "catalog.db")},
		{"stray argument", []string{"--from", "x", "now"}, nil, "unexpected arguments"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var out bytes.Buffer
			err := runMigrateCatalog(t.Context(), tc.args, func(k string) string { return tc.env[k] }, &out, &out)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err = %v, want %q", err, tc.want)
			}
		})
	}
	if matches, _ := filepath.Glob(filepath.Join(dir, "*")); len(matches) != 0 {
		t.Fatalf("a failed run created %v", matches)
	}
}

// TestMigrateCatalog_CopyChunks moves a repository from a file:// store to
// S3 along with its catalog: every stored chunk and index arrives with its
// id and content; a chunk marked bad whose object is gone is skipped.
func TestMigrateCatalog_CopyChunks(t *testing.T) {
	dsn := testenv.PostgresDSN(t)
	s3 := testenv.S3(t)
	dir := t.TempDir()
	ctx := t.Context()
	env := map[string]string{
		"BACKSTOP_DATA_DIR": dir, "BACKSTOP_DATABASE_URL": dsn, "BACKSTOP_LOG_LEVEL": "warn",
		"BACKSTOP_STORE":         "file://" + filepath.Join(dir, "chunks"),
		"BACKSTOP_S3_ACCESS_KEY": s3.AccessKey, "BACKSTOP_S3_SECRET_KEY": s3.SecretKey,
	}
	getenv := func(k string) string { return env[k] }
	cfg := DefaultConfig()
	cfg.Store, cfg.S3AccessKey, cfg.S3SecretKey = env["BACKSTOP_STORE"], s3.AccessKey, secret.String(s3.SecretKey)
	from, err := openStore(ctx, cfg, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer from.Close()

	src, err := sqlitecat.Open(ctx, sqlitecat.DefaultConfig(filepath.Join(dir, "catalog.db")), nil)
	if err != nil {
		t.Fatal(err)
	}
	var ids []backup.ChunkID
	contents := map[backup.ChunkID][]byte{}
	for i := range 20 {
		data := bytes.Repeat([]byte{byte(i + 1), byte(i * 7)}, 3000+i)
		id := from.Sum(data)
		n, err := from.Put(ctx, id, data)
		if err != nil {
			t.Fatal(err)
		}
		if err := src.AddChunks(ctx, []backup.ChunkInfo{{ID: id, Size: int64(len(data)), StoredSize: n}}); err != nil {
			t.Fatal(err)
		}
		ids = append(ids, id)
		contents[id] = data
	}
	// The last chunk was found missing by a verify.
	bad := ids[19]
	if err := from.Delete(ctx, []backup.ChunkID{bad}); err != nil {
		t.Fatal(err)
	}
	if err := src.MarkChunksBad(ctx, []backup.ChunkID{bad}); err != nil {
		t.Fatal(err)
	}
	snap, err := src.CreateSnapshot(ctx, backup.Snapshot{Namespace: "default", Storage: "backstop", VMID: 100,
		Type: backup.GuestQemu, BackupTime: time.Date(2026, 11, 25, 22, 0, 0, 0, time.UTC)})
	if err != nil {
		t.Fatal(err)
	}
	indexKey := "indexes/" + snap.ID + "/drive-scsi0.fidx"
	index := []byte("an index, as far as this test knows")
	if err := from.PutObject(ctx, indexKey, index); err != nil {
		t.Fatal(err)
	}
	if err := src.AddDisk(ctx, backup.Disk{SnapshotID: snap.ID, Device: "drive-scsi0", Size: 1 << 20, ChunkSize: 4 << 20,
		BitmapMode: "none", IndexKey: indexKey}); err != nil {
		t.Fatal(err)
	}
	if _, err := src.CommitSnapshot(ctx, snap.ID, 1<<20, 1<<20, ids[:19]); err != nil {
		t.Fatal(err)
	}
	if err := src.Close(); err != nil {
		t.Fatal(err)
	}

	target := "s3://" + testenv.Bucket() + "?endpoint=" + s3.Endpoint + "&insecure=1"
	var stdout, stderr bytes.Buffer
	if err := runMigrateCatalog(ctx, []string{"--copy-chunks-to", target}, getenv, &stdout, &stderr); err != nil {
		t.Fatalf("migrate-catalog: %v\n%s", err, stderr.String())
	}
	if out := stdout.String(); !strings.Contains(out, "copied 19 chunks") || !strings.Contains(out, "and 1 indexes") ||
		!strings.Contains(out, "1 chunks marked bad were unreadable") || !strings.Contains(out, "BACKSTOP_STORE="+target) {
		t.Fatalf("output:\n%s", out)
	}

	cfg.Store = target
	to, err := openStore(ctx, cfg, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer to.Close()
	for _, id := range ids[:19] {
		got, err := to.Get(ctx, id, nil)
		if err != nil || !bytes.Equal(got, contents[id]) {
			t.Fatalf("chunk %s in the target: %d bytes, %v", id, len(got), err)
		}
	}
	if _, err := to.Get(ctx, bad, nil); !errors.Is(err, backup.ErrNotFound) {
		t.Fatalf("the bad chunk in the target: %v, want ErrNotFound", err)
	}
	if got, err := to.GetObject(ctx, indexKey); err != nil || !bytes.Equal(got, index) {
		t.Fatalf("index in the target: %q, %v", got, err)
	}
	dst, err := catalog.Open(ctx, catalog.DefaultConfig(secret.String(dsn)), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer dst.Close()
	if disks, err := dst.ListDisks(ctx, snap.ID); err != nil || len(disks) != 1 || disks[0].IndexKey != indexKey {
		t.Fatalf("disks in Postgres: %+v, %v", disks, err)
	}

	// Without a source store there is nothing to copy from.
	delete(env, "BACKSTOP_STORE")
	err = runMigrateCatalog(ctx, []string{"--copy-chunks-to", target}, getenv, &stdout, &stderr)
	if err == nil || !strings.Contains(err.Error(), "needs BACKSTOP_STORE") {
		t.Fatalf("migrate-catalog without BACKSTOP_STORE: %v", err)
	}
}
