package handlers

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/hex"
	"errors"
	"net/http"
	"strings"
	"time"

	"github.com/backstop-pve/backstop/internal/backup"
)

// Token format: "bst_" + id + "_" + secret, id 16 and secret 64 lowercase
// hex digits. The catalog keeps id and SHA-256(secret): the secret has 256
// bits of entropy, so a plain hash is enough (no password stretching), and a
// stolen catalog yields no usable token.
const (
	tokenPrefix    = "bst_"
	tokenIDLen     = 16
	tokenSecretLen = 64
)

// BootstrapTokenID is the principal id of the BACKSTOP_ADMIN_TOKEN.
const BootstrapTokenID = "bootstrap"

// NewToken makes a token with a fresh id and secret. It returns the bearer
// string to give to the user (once) and the hash to store.
func NewToken() (id, bearer string, secretHash []byte, err error) {
	var idb [tokenIDLen / 2]byte
	var sec [tokenSecretLen / 2]byte
	if _, err := rand.Read(idb[:]); err != nil {
		return "", "", nil, err
	}
	if _, err := rand.Read(sec[:]); err != nil {
		return "", "", nil, err
	}
	id = hex.EncodeToString(idb[:])
	secret := hex.EncodeToString(sec[:])
	h := sha256.Sum256([]byte(secret))
	return id, tokenPrefix + id + "_" + secret, h[:], nil
}

// parseToken splits a bearer string into id and secret.
func parseToken(bearer string) (id, secret string, ok bool) {
	rest, ok := strings.CutPrefix(bearer, tokenPrefix)
	if !ok {
		return "", "", false
	}
	id, secret, ok = strings.Cut(rest, "_")
	if !ok || len(id) != tokenIDLen || len(secret) != tokenSecretLen || !isLowerHex(id) || !isLowerHex(secret) {
		return "", "", false
	}
	return id, secret, true
}

func isLowerHex(s string) bool {
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= '0' && c <= '9' || c >= 'a' && c <= 'f') {
			return false
		}
	}
	return true
}

type principalKey struct{}

// principalFrom returns the authenticated token of a request.
func principalFrom(ctx context.Context) (backup.Token, bool) {
	t, ok := ctx.Value(principalKey{}).(backup.Token)
	return t, ok
}

// authenticator checks bearer tokens against the catalog and the bootstrap
// admin token.
type authenticator struct {
	tokens    backup.TokenCatalog
	bootstrap [sha256.Size]byte // SHA-256 of BACKSTOP_ADMIN_TOKEN; zero when unset
	hasBoot   bool
	now       func() time.Time
}

func newAuthenticator(tokens backup.TokenCatalog, bootstrapToken string, now func() time.Time) *authenticator {
	a := &authenticator{tokens: tokens, now: now}
	if bootstrapToken != "" {
		a.bootstrap = sha256.Sum256([]byte(bootstrapToken))
		a.hasBoot = true
	}
	return a
}

var errNoToken = backup.Errorf(backup.ErrUnauthorized, "missing or malformed bearer token")
var errBadToken = backup.Errorf(backup.ErrUnauthorized, "invalid, expired or revoked token")

// authenticate resolves the request's bearer token to a principal. Every
// comparison of secret material is constant-time.
func (a *authenticator) authenticate(ctx context.Context, r *http.Request) (backup.Token, error) {
	scheme, bearer, ok := strings.Cut(r.Header.Get("Authorization"), " ")
	if !ok || !strings.EqualFold(scheme, "Bearer") || bearer == "" {
		return backup.Token{}, errNoToken
	}
	bearer = strings.TrimSpace(bearer)
	if a.hasBoot {
		h := sha256.Sum256([]byte(bearer))
		if subtle.ConstantTimeCompare(h[:], a.bootstrap[:]) == 1 {
			return backup.Token{ID: BootstrapTokenID, Name: "bootstrap admin", Role: backup.RoleAdmin}, nil
		}
	}
	id, secret, ok := parseToken(bearer)
	if !ok {
		return backup.Token{}, errBadToken
	}
	tok, stored, err := a.tokens.TokenSecret(ctx, id)
	if errors.Is(err, backup.ErrNotFound) {
		return backup.Token{}, errBadToken
	}
	if err != nil {
		return backup.Token{}, err
	}
	h := sha256.Sum256([]byte(secret))
	if subtle.ConstantTimeCompare(h[:], stored) != 1 {
		return backup.Token{}, errBadToken
	}
	if tok.ExpiresAt != nil && !a.now().Before(*tok.ExpiresAt) {
		return backup.Token{}, errBadToken
	}
	return tok, nil
}

// requireNamespace fails unless the request's principal may act in ns.
func requireNamespace(ctx context.Context, ns string) error {
	p, ok := principalFrom(ctx)
	if !ok {
		return backup.Errorf(backup.ErrUnauthorized, "not authenticated")
	}
	if !p.InNamespace(ns) {
		return backup.Errorf(backup.ErrForbidden, "token %s may not act in namespace %q", p.ID, ns)
	}
	return nil
}
