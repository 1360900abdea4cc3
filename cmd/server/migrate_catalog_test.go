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
