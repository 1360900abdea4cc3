// Package migrations holds the catalog's Postgres schema as goose SQL
// migrations (NNNNN_name.sql, "-- +goose Up" / "-- +goose Down"), embedded
// so the server binary carries them; internal/catalog applies them on Open.
// Migrations are append-only: a released file is never edited.
package migrations

import "embed"

// FS holds the *.sql migrations at its root.
//
//go:embed *.sql
var FS embed.FS
