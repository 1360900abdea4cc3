package handlers

import (
	"context"
	"fmt"

	"github.com/backstop-pve/backstop/api"
	"github.com/backstop-pve/backstop/internal/backup"
)

func (h *handler) CreateToken(ctx context.Context, req api.CreateTokenRequestObject) (api.CreateTokenResponseObject, error) {
	b := req.Body
	t := backup.Token{Name: b.Name, Role: backup.Role(b.Role), CreatedAt: h.cfg.Now().UTC(), ExpiresAt: b.ExpiresAt}
	if b.Namespaces != nil {
		for _, ns := range *b.Namespaces {
			t.Namespaces = append(t.Namespaces, ns)
		}
	}
	if t.ExpiresAt != nil && !t.ExpiresAt.After(t.CreatedAt) {
		return nil, backup.Errorf(backup.ErrInvalid, "expires_at %s is not in the future", t.ExpiresAt.Format("2006-01-02T15:04:05Z07:00"))
	}
	created, err := CreateToken(ctx, h.catalog, t)
	if err != nil {
		return nil, err
	}
	at := toAPIToken(created.Token)
	return api.CreateToken201JSONResponse{
		Id: at.Id, Name: at.Name, Role: api.TokenCreatedRole(at.Role), Namespaces: at.Namespaces,
		CreatedAt: at.CreatedAt, ExpiresAt: at.ExpiresAt, Token: created.Bearer,
	}, nil
}

// CreatedToken is a stored token with the bearer string, shown only once.
type CreatedToken struct {
	Token  backup.Token
	Bearer string
}

// CreateToken makes and stores a new token; `server token create` uses it
// as well as the API.
func CreateToken(ctx context.Context, tokens backup.TokenCatalog, t backup.Token) (CreatedToken, error) {
	if !t.Role.Valid() {
		return CreatedToken{}, backup.Errorf(backup.ErrInvalid, "role %q: want admin, backup or read", t.Role)
	}
	for _, ns := range t.Namespaces {
		if err := backup.ValidateNamespace(ns); err != nil {
			return CreatedToken{}, err
		}
	}
	id, bearer, hash, err := NewToken()
	if err != nil {
		return CreatedToken{}, fmt.Errorf("handlers: new token: %w", err)
	}
	t.ID = id
	if err := tokens.CreateToken(ctx, t, hash); err != nil {
		return CreatedToken{}, err
	}
	return CreatedToken{Token: t, Bearer: bearer}, nil
}

func (h *handler) ListTokens(ctx context.Context, _ api.ListTokensRequestObject) (api.ListTokensResponseObject, error) {
	toks, err := h.catalog.ListTokens(ctx)
	if err != nil {
		return nil, err
	}
	out := make(api.ListTokens200JSONResponse, 0, len(toks))
	for _, t := range toks {
		out = append(out, toAPIToken(t))
	}
	return out, nil
}

func (h *handler) DeleteToken(ctx context.Context, req api.DeleteTokenRequestObject) (api.DeleteTokenResponseObject, error) {
	if err := h.catalog.DeleteToken(ctx, req.Id); err != nil {
		return nil, err
	}
	return api.DeleteToken204Response{}, nil
}
