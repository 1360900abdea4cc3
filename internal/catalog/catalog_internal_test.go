package catalog

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"testing"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/backstop-pve/backstop/internal/backup"
	"github.com/backstop-pve/backstop/internal/secret"
	"github.com/backstop-pve/backstop/internal/testenv"
)

// TestMigrations_DownUp checks every Down section undoes its Up: migrate
// up, all the way down, and up again.
func TestMigrations_DownUp(t *testing.T) {
	dsn := secret.String(testenv.PostgresDSN(t))
	ctx := t.Context()
	if err := Migrate(ctx, dsn, nil); err != nil {
		t.Fatalf("Migrate: %v", err)
	}
	pcfg, err := poolConfig(Config{DSN: dsn})
	if err != nil {
		t.Fatalf("poolConfig: %v", err)
	}
	p, err := newProvider(pcfg.ConnConfig, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatalf("newProvider: %v", err)
	}
	defer p.Close()
	if _, err := p.DownTo(ctx, 0); err != nil {
		t.Fatalf("DownTo 0: %v", err)
	}
	conn, err := pgx.ConnectConfig(ctx, pcfg.ConnConfig)
	if err != nil {
		t.Fatalf("connect: %v", err)
	}
	defer conn.Close(context.Background())
	var n int
	if err := conn.QueryRow(ctx, `SELECT count(*) FROM pg_tables WHERE schemaname = 'public'
		AND tablename <> 'goose_db_version'`).Scan(&n); err != nil || n != 0 {
		t.Fatalf("tables left after down: %d, %v", n, err)
	}
	if err := Migrate(ctx, dsn, nil); err != nil {
		t.Fatalf("Migrate again: %v", err)
	}
}

func TestKindOf(t *testing.T) {
	cases := []struct {
		err  error
		want error
	}{
		{pgx.ErrNoRows, backup.ErrNotFound},
		{&pgconn.PgError{Code: "23505"}, backup.ErrConflict},
		{&pgconn.PgError{Code: "23503"}, backup.ErrInvalid},
		{&pgconn.PgError{Code: "23514"}, backup.ErrInvalid},
		{&pgconn.PgError{Code: "08006"}, backup.ErrUnavailable},
		{&pgconn.PgError{Code: "57P01"}, backup.ErrUnavailable},
		{&pgconn.PgError{Code: "53100"}, backup.ErrStorageFull},
		{&pgconn.PgError{Code: "42P01"}, nil},
		{fmt.Errorf("read: %w", io.ErrUnexpectedEOF), backup.ErrUnavailable},
		{context.Canceled, nil},
		{errors.New("other"), nil},
	}
	for _, tc := range cases {
		if got := kindOf(tc.err); got != tc.want { //nolint:errorlint // sentinel identity is the point
			t.Errorf("kindOf(%v) = %v, want %v", tc.err, got, tc.want)
		}
		err := wrapf(tc.err, "do %s", "x")
		if tc.want != nil && !errors.Is(err, tc.want) {
			t.Errorf("wrapf(%v) = %v, not %v", tc.err, err, tc.want)
		}
		if !errors.Is(err, tc.err) {
			t.Errorf("wrapf(%v) lost the cause", tc.err)
		}
	}
}
