package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/backstop-pve/backstop/internal/backup"
	"github.com/backstop-pve/backstop/internal/handlers"
	"github.com/backstop-pve/backstop/internal/secret"
)

// runToken implements `server token create`: for ops, and to get the first
// token without a bootstrap admin token. It talks to the catalog directly.
func runToken(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) error {
	if len(args) == 0 || args[0] != "create" {
		return fmt.Errorf("usage: server token create --name NAME --role admin|backup|read [--ns a,b] [--expires 720h]")
	}
	fs := flag.NewFlagSet("server token create", flag.ContinueOnError)
	fs.SetOutput(stderr)
	name := fs.String("name", "", "token name (required)")
	role := fs.String("role", "", "admin, backup or read (required)")
	nss := fs.String("ns", "", "comma-separated namespaces the token may act in (default all)")
	expires := fs.Duration("expires", 0, "lifetime, e.g. 720h (default never)")
	asJSON := fs.Bool("json", false, "print the token as JSON")
	// The catalog settings come from the same env and flags as serve.
	cfg := DefaultConfig()
	for _, s := range cfg.settings() {
		if v := getenv(envName(s.name)); v != "" {
			if s.str != nil {
				*s.str = v
			} else {
				*s.sec = secret.String(v)
			}
		}
	}
	fs.Func("database-url", "Postgres DSN of the catalog (env BACKSTOP_DATABASE_URL; default: the embedded catalog)", func(v string) error {
		cfg.DatabaseURL = secret.String(v)
		return nil
	})
	fs.StringVar(&cfg.DataDir, "data-dir", cfg.DataDir, "data directory of the embedded catalog (env BACKSTOP_DATA_DIR)")
	if err := fs.Parse(args[1:]); err != nil {
		return err
	}
	if *name == "" || *role == "" {
		return fmt.Errorf("--name and --role are required")
	}
	if cfg.embeddedCatalog() && cfg.DataDir == "" {
		return fmt.Errorf("BACKSTOP_DATA_DIR is empty (and no BACKSTOP_DATABASE_URL is set)")
	}
	t := backup.Token{Name: *name, Role: backup.Role(*role), CreatedAt: time.Now().UTC()}
	if *nss != "" {
		t.Namespaces = strings.Split(*nss, ",")
	}
	if *expires > 0 {
		e := t.CreatedAt.Add(*expires)
		t.ExpiresAt = &e
	}
	cat, err := openCatalogCmd(ctx, cfg, newLogger(cfg, stderr))
	if err != nil {
		return err
	}
	defer cat.Close()
	created, err := handlers.CreateToken(ctx, cat, t)
	if err != nil {
		return err
	}
	if *asJSON {
		return json.NewEncoder(stdout).Encode(map[string]any{
			"id": created.Token.ID, "name": t.Name, "role": t.Role, "namespaces": t.Namespaces, "token": created.Bearer,
		})
	}
	_, err = fmt.Fprintln(stdout, created.Bearer)
	return err
}
