package sqlitecat

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"

	"github.com/backstop-pve/backstop/internal/backup"
)

const tokenCols = `id, name, role, namespaces, created_at, expires_at`

// CreateToken stores a token with the hash of its secret. A zero CreatedAt
// is set to now. An id already in use is ErrConflict.
func (s *Store) CreateToken(ctx context.Context, t backup.Token, secretHash []byte) error {
	switch {
	case t.ID == "":
		return wrapf(invalid("token id is empty"), "create token")
	case !t.Role.Valid():
		return wrapf(invalid("token role %q: want admin, backup or read", t.Role), "create token %s", t.ID)
	case len(secretHash) == 0:
		return wrapf(invalid("token secret hash is empty"), "create token %s", t.ID)
	}
	created := dbTime(t.CreatedAt)
	if t.CreatedAt.IsZero() {
		created = s.nowUTC()
	}
	ns := t.Namespaces
	if ns == nil {
		ns = []string{}
	}
	nsJSON, err := json.Marshal(ns)
	if err != nil {
		return wrapf(err, "create token %s", t.ID)
	}
	_, err = s.wdb.ExecContext(ctx, `
		INSERT INTO tokens (id, name, role, namespaces, secret_hash, created_at, expires_at)
		VALUES (?, ?, ?, ?, ?, ?, ?)`,
		t.ID, t.Name, string(t.Role), string(nsJSON), secretHash, micros(created), microsPtr(t.ExpiresAt))
	if ok, _ := isUnique(err); ok {
		err = because(conflict("token %s already exists", t.ID), err)
	}
	if err != nil {
		return wrapf(err, "create token %s", t.ID)
	}
	return nil
}

// TokenSecret returns a token and its secret hash, expired or not.
func (s *Store) TokenSecret(ctx context.Context, id string) (backup.Token, []byte, error) {
	var hash []byte
	t, err := scanToken(s.rdb.QueryRowContext(ctx,
		`SELECT `+tokenCols+`, secret_hash FROM tokens WHERE id = ?`, id), &hash)
	if errors.Is(err, sql.ErrNoRows) {
		err = because(notFound("token %s not found", id), err)
	}
	if err != nil {
		return backup.Token{}, nil, wrapf(err, "get token %s", id)
	}
	return t, hash, nil
}

// ListTokens returns all tokens, oldest first.
func (s *Store) ListTokens(ctx context.Context) ([]backup.Token, error) {
	ts, err := collect(ctx, s.rdb, func(r *sql.Rows) (backup.Token, error) { return scanToken(r) },
		`SELECT `+tokenCols+` FROM tokens ORDER BY created_at, id`)
	if err != nil {
		return nil, wrapf(err, "list tokens")
	}
	return ts, nil
}

// DeleteToken removes a token; a missing one is ErrNotFound.
func (s *Store) DeleteToken(ctx context.Context, id string) error {
	ok, err := exec1(ctx, s.wdb, `DELETE FROM tokens WHERE id = ?`, id)
	if err == nil && !ok {
		err = notFound("token %s not found", id)
	}
	if err != nil {
		return wrapf(err, "delete token %s", id)
	}
	return nil
}

// row is what *sql.Row and *sql.Rows have in common.
type row interface{ Scan(dest ...any) error }

func scanToken(r row, extra ...any) (backup.Token, error) {
	var t backup.Token
	var role, ns string
	dest := append([]any{&t.ID, &t.Name, &role, &ns, timeCol{&t.CreatedAt}, timePtrCol{&t.ExpiresAt}}, extra...)
	if err := r.Scan(dest...); err != nil {
		return backup.Token{}, err
	}
	t.Role = backup.Role(role)
	if err := json.Unmarshal([]byte(ns), &t.Namespaces); err != nil {
		return backup.Token{}, err
	}
	if len(t.Namespaces) == 0 {
		t.Namespaces = nil
	}
	return t, nil
}

// collect runs a query and scans every row with scan.
func collect[T any](ctx context.Context, q querier, scan func(*sql.Rows) (T, error), query string, args ...any) ([]T, error) {
	rows, err := q.QueryContext(ctx, query, args...)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []T
	for rows.Next() {
		v, err := scan(rows)
		if err != nil {
			return nil, err
		}
		out = append(out, v)
	}
	return out, rows.Err()
}
