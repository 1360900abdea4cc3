package catalog

import (
	"context"
	"errors"

	"github.com/jackc/pgx/v5"

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
	_, err := s.pool.Exec(ctx, `
		INSERT INTO tokens (id, name, role, namespaces, secret_hash, created_at, expires_at)
		VALUES ($1, $2, $3, $4, $5, $6, $7)`,
		t.ID, t.Name, string(t.Role), ns, secretHash, created, dbTimePtr(t.ExpiresAt))
	if pgCode(err) == "23505" {
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
	t, err := scanToken(s.pool.QueryRow(ctx,
		`SELECT `+tokenCols+`, secret_hash FROM tokens WHERE id = $1`, id), &hash)
	if errors.Is(err, pgx.ErrNoRows) {
		err = because(notFound("token %s not found", id), err)
	}
	if err != nil {
		return backup.Token{}, nil, wrapf(err, "get token %s", id)
	}
	return t, hash, nil
}

// ListTokens returns all tokens, oldest first.
func (s *Store) ListTokens(ctx context.Context) ([]backup.Token, error) {
	rows, _ := s.pool.Query(ctx, `SELECT `+tokenCols+` FROM tokens ORDER BY created_at, id`)
	ts, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (backup.Token, error) { return scanToken(r) })
	if err != nil {
		return nil, wrapf(err, "list tokens")
	}
	return ts, nil
}

// DeleteToken removes a token; a missing one is ErrNotFound.
func (s *Store) DeleteToken(ctx context.Context, id string) error {
	ok, err := exec1(ctx, s.pool, `DELETE FROM tokens WHERE id = $1`, id)
	if err == nil && !ok {
		err = notFound("token %s not found", id)
	}
	if err != nil {
		return wrapf(err, "delete token %s", id)
	}
	return nil
}

func scanToken(row pgx.Row, extra ...any) (backup.Token, error) {
	var t backup.Token
	var role string
	dest := append([]any{&t.ID, &t.Name, &role, &t.Namespaces, &t.CreatedAt, &t.ExpiresAt}, extra...)
	if err := row.Scan(dest...); err != nil {
		return backup.Token{}, err
	}
	t.Role = backup.Role(role)
	if len(t.Namespaces) == 0 {
		t.Namespaces = nil
	}
	t.CreatedAt = t.CreatedAt.UTC()
	t.ExpiresAt = utcPtr(t.ExpiresAt)
	return t, nil
}
