package catalogtest

import (
	"bytes"
	"slices"
	"testing"
	"time"

	"github.com/backstop-pve/backstop/internal/backup"
)

func testTokens(t *testing.T, c backup.Catalog) {
	ctx := t.Context()
	expires := t0.Add(24 * time.Hour)
	tokens := []backup.Token{
		{ID: "tok-admin", Name: "bootstrap", Role: backup.RoleAdmin, CreatedAt: t0},
		{ID: "tok-backup", Name: "pve cluster a", Role: backup.RoleBackup, Namespaces: []string{"a", "b"},
			CreatedAt: t0.Add(time.Second), ExpiresAt: &expires},
		{ID: "tok-read", Name: "dashboard", Role: backup.RoleRead, Namespaces: []string{"default"},
			CreatedAt: t0.Add(2 * time.Second)},
	}
	hashes := map[string][]byte{}
	for i, tok := range tokens {
		// Hashes are arbitrary bytes, NUL and high bytes included.
		h := append([]byte{0, 0xff, byte(i)}, bytes.Repeat([]byte{0x80}, 29)...)
		hashes[tok.ID] = h
		if err := c.CreateToken(ctx, tok, h); err != nil {
			t.Fatalf("CreateToken %s: %v", tok.ID, err)
		}
	}
	for _, want := range tokens {
		got, hash, err := c.TokenSecret(ctx, want.ID)
		if err != nil {
			t.Fatalf("TokenSecret %s: %v", want.ID, err)
		}
		wantEqual(t, "TokenSecret "+want.ID, got, want)
		if !bytes.Equal(hash, hashes[want.ID]) {
			t.Fatalf("TokenSecret %s: hash %x, want %x", want.ID, hash, hashes[want.ID])
		}
	}
	list, err := c.ListTokens(ctx)
	if err != nil {
		t.Fatalf("ListTokens: %v", err)
	}
	wantEqual(t, "ListTokens (oldest first)", list, tokens)

	if err := c.DeleteToken(ctx, "tok-backup"); err != nil {
		t.Fatalf("DeleteToken: %v", err)
	}
	_, _, err = c.TokenSecret(ctx, "tok-backup")
	wantKind(t, "TokenSecret after delete", err, backup.ErrNotFound)
	wantKind(t, "DeleteToken twice", c.DeleteToken(ctx, "tok-backup"), backup.ErrNotFound)
	list, err = c.ListTokens(ctx)
	if err != nil {
		t.Fatalf("ListTokens: %v", err)
	}
	if got := len(list); got != 2 || slices.ContainsFunc(list, func(t backup.Token) bool { return t.ID == "tok-backup" }) {
		t.Fatalf("ListTokens after delete: %+v", list)
	}
}

func testTokenErrors(t *testing.T, c backup.Catalog) {
	ctx := t.Context()
	tok := backup.Token{ID: "tok", Name: "x", Role: backup.RoleRead}
	if err := c.CreateToken(ctx, tok, []byte("hash")); err != nil {
		t.Fatalf("CreateToken: %v", err)
	}
	got, _, err := c.TokenSecret(ctx, "tok")
	if err != nil {
		t.Fatalf("TokenSecret: %v", err)
	}
	if got.CreatedAt.IsZero() {
		t.Errorf("zero CreatedAt was not set")
	}
	wantKind(t, "CreateToken with a used id", c.CreateToken(ctx, tok, []byte("other")), backup.ErrConflict)
	bad := backup.Token{ID: "tok2", Role: "root"}
	wantKind(t, "CreateToken with a bad role", c.CreateToken(ctx, bad, []byte("hash")), backup.ErrInvalid)
	_, _, err = c.TokenSecret(ctx, "nope")
	wantKind(t, "TokenSecret missing", err, backup.ErrNotFound)
	wantKind(t, "DeleteToken missing", c.DeleteToken(ctx, "nope"), backup.ErrNotFound)
}

func testJobs(t *testing.T, c backup.Catalog) {
	ctx := t.Context()
	j, err := c.CreateJob(ctx, backup.Job{Node: "pve1", Storage: "backstop", StartTime: t0})
	if err != nil {
		t.Fatalf("CreateJob: %v", err)
	}
	if j.ID == "" || j.CreatedAt.IsZero() || j.FinishedAt != nil || j.Node != "pve1" || j.Storage != "backstop" ||
		!j.StartTime.Equal(t0) {
		t.Fatalf("CreateJob returned %+v", j)
	}
	got, err := c.GetJob(ctx, j.ID)
	if err != nil {
		t.Fatalf("GetJob: %v", err)
	}
	wantEqual(t, "GetJob", got, j)

	f1, err := c.FinishJob(ctx, j.ID)
	if err != nil {
		t.Fatalf("FinishJob: %v", err)
	}
	if f1.FinishedAt == nil {
		t.Fatalf("FinishJob: FinishedAt not set: %+v", f1)
	}
	f2, err := c.FinishJob(ctx, j.ID)
	if err != nil {
		t.Fatalf("FinishJob twice: %v", err)
	}
	wantEqual(t, "FinishJob twice", f2, f1)
	got, err = c.GetJob(ctx, j.ID)
	if err != nil {
		t.Fatalf("GetJob: %v", err)
	}
	wantEqual(t, "GetJob after finish", got, f1)

	for _, id := range []string{missingID, "not-an-id"} {
		_, err = c.GetJob(ctx, id)
		wantKind(t, "GetJob "+id, err, backup.ErrNotFound)
		_, err = c.FinishJob(ctx, id)
		wantKind(t, "FinishJob "+id, err, backup.ErrNotFound)
	}
}
