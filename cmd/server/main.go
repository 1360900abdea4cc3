// Command server is the Backstop service: the REST API that PVE's plugin,
// the dashboard and ops scripts call, the NBD puller and restore exports,
// over a catalog (Postgres, or embedded) and a chunk store (S3, or a local
// directory).
//
//	server [serve] [flags]     run the service (default)
//	server migrate [flags]     apply catalog migrations and exit
//	server token create …      create an API token and print it once
//	server migrate-catalog …   copy the embedded catalog into Postgres
//	server healthcheck [--url]  probe /readyz (the container's health check)
//
// Configuration comes from BACKSTOP_* environment variables and the
// matching flags; `server -h` lists them. With none set the server runs on
// its own: embedded catalog, chunks and a generated admin token in
// ./backstop-data (see datadir.go).
package main

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sync/errgroup"

	"github.com/backstop-pve/backstop/internal/backup"
	"github.com/backstop-pve/backstop/internal/catalog"
	sqlitecat "github.com/backstop-pve/backstop/internal/catalog/sqlite"
	"github.com/backstop-pve/backstop/internal/chunkstore"
	"github.com/backstop-pve/backstop/internal/handlers"
	"github.com/backstop-pve/backstop/internal/nbd"
	"github.com/backstop-pve/backstop/internal/secret"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, os.Args[1:], os.Getenv, os.Stdout, os.Stderr); err != nil {
		fmt.Fprintln(os.Stderr, "backstop:", err)
		os.Exit(1)
	}
}

// run dispatches the subcommand. It takes its environment as arguments so
// tests can run the whole server in-process.
func run(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) error {
	cmd := "serve"
	if len(args) > 0 && !strings.HasPrefix(args[0], "-") {
		cmd, args = args[0], args[1:]
	}
	switch cmd {
	case "serve":
		cfg, _, err := loadConfig("server serve", getenv, args, stderr)
		if err != nil {
			return err
		}
		return serve(ctx, cfg, newLogger(cfg, stderr), stdout, nil)
	case "migrate":
		cfg, _, err := loadConfig("server migrate", getenv, args, stderr)
		if err != nil {
			return err
		}
		return migrate(ctx, cfg, newLogger(cfg, stderr))
	case "token":
		return runToken(ctx, args, getenv, stdout, stderr)
	case "migrate-catalog":
		return runMigrateCatalog(ctx, args, zeroConfigEnv(getenv), stdout, stderr)
	case "healthcheck":
		return runHealthcheck(ctx, args, getenv, stdout, stderr)
	case "help", "-h", "--help":
		fmt.Fprintln(stdout, "usage: server [serve|migrate|migrate-catalog|token create] [flags]; server serve -h lists the flags")
		return nil
	}
	return fmt.Errorf("unknown command %q (want serve, migrate, migrate-catalog or token)", cmd)
}

// zeroConfigEnv fills in what serve falls back to when BACKSTOP_DATA_DIR
// and BACKSTOP_STORE are unset, so that migrate-catalog finds the catalog
// and chunks of a zero-config server run from the same directory.
func zeroConfigEnv(getenv func(string) string) func(string) string {
	dir := getenv("BACKSTOP_DATA_DIR")
	if dir == "" {
		dir = DefaultConfig().DataDir
	}
	if abs, err := filepath.Abs(dir); err == nil {
		dir = abs
	}
	return func(k string) string {
		v := getenv(k)
		switch {
		case v != "":
			return v
		case k == "BACKSTOP_DATA_DIR":
			return dir
		case k == "BACKSTOP_STORE":
			return defaultStore(dir)
		}
		return ""
	}
}

// shutdownTimeout bounds the graceful shutdown of the HTTP server.
const shutdownTimeout = 30 * time.Second

// serve runs the service until ctx ends. It prints where to reach it to
// out. onListen, when set, is told the HTTP address once it accepts
// connections (tests listen on :0).
func serve(ctx context.Context, cfg Config, log *slog.Logger, out io.Writer, onListen func(addr string)) (err error) {
	// What is not configured falls back to the data directory, each on its
	// own: the catalog, the chunk store and the admin token.
	var tokenFile string
	var tokenCreated bool
	certPath, keyPath, certCreated := cfg.TLSCert, cfg.TLSKey, false
	dir := ""
	if cfg.usesDataDir() {
		dd, err := lockDataDir(cfg.DataDir)
		if err != nil {
			return err
		}
		defer dd.Close()
		dir = dd.path
		if cfg.Store == "" {
			cfg.Store = defaultStore(dir)
		}
		if cfg.AdminToken == "" {
			tok, path, created, err := dd.adminToken()
			if err != nil {
				return fmt.Errorf("admin token: %w", err)
			}
			cfg.AdminToken, tokenFile, tokenCreated = secret.String(tok), path, created
		}
		if cfg.tlsMode() == tlsGenerated {
			certPath, keyPath, certCreated, err = dd.selfSignedCert(cfg.Listen)
			if err != nil {
				return fmt.Errorf("TLS certificate: %w", err)
			}
		}
	}
	tel, log, err := setupTelemetry(ctx, cfg, log)
	if err != nil {
		return err
	}
	defer func() { err = errors.Join(err, tel.Shutdown(context.WithoutCancel(ctx))) }()
	cat, err := openCatalog(ctx, cfg, dir, log, tel.catalog)
	if err != nil {
		return err
	}
	defer cat.Close()

	store, err := openStore(ctx, cfg, log)
	if err != nil {
		return err
	}
	traced, err := tel.store(store)
	if err != nil {
		return err
	}

	gcCfg, schedule, err := cfg.maintenance()
	if err != nil {
		return err
	}
	svcCfg := backup.DefaultServiceConfig()
	svcCfg.GC = gcCfg
	tel.service(&svcCfg)
	backups := backup.NewService(log, svcCfg, cat, traced, traced, nbd.Opener{})
	defer backups.Close() // after the HTTP server: cancels and waits for running pulls

	// One TLS configuration for the API, the dashboard and NBD STARTTLS.
	var tlsConfig *tls.Config
	cert := certInfo{path: certPath, created: certCreated, generated: cfg.tlsMode() == tlsGenerated}
	if cfg.tlsMode() != tlsPlain {
		if tlsConfig, err = loadTLS(certPath, keyPath); err != nil {
			return err
		}
		cert.fingerprint = fingerprint(tlsConfig.Certificates[0].Certificate[0])
	}
	nbdServer := nbd.NewServer(nbd.NewBackupExports(backups), nbd.ServerOptions{TLSConfig: tlsConfig, Logger: log})
	nbdLn, err := net.Listen("tcp", cfg.NBDListen)
	if err != nil {
		return fmt.Errorf("listen %s: %w", cfg.NBDListen, err)
	}
	defer nbdLn.Close()

	status := handlers.NewStatusCache(log, cat.Stats, storeCapacity(cfg.Store), statusInterval)
	deps := handlers.Deps{
		Catalog: cat,
		Backups: backups,
		Status:  status,
		NBD:     nbdServer,
		Ready:   []func(context.Context) error{cat.Ping, store.Ping},
	}
	tel.handlers(&deps)
	refreshGauges, err := tel.catalogMetrics(cat)
	if err != nil {
		return err
	}
	h, err := handlers.New(log, handlers.Config{
		AdminToken:   string(cfg.AdminToken),
		NBDAdvertise: cfg.NBDAdvertise,
		NBDPort:      nbdLn.Addr().(*net.TCPAddr).Port,
	}, deps)
	if err != nil {
		return err
	}

	ln, err := net.Listen("tcp", cfg.Listen)
	if err != nil {
		return fmt.Errorf("listen %s: %w", cfg.Listen, err)
	}
	srv := &http.Server{
		Handler:           h,
		ReadHeaderTimeout: 10 * time.Second,
		IdleTimeout:       2 * time.Minute,
		BaseContext:       func(net.Listener) context.Context { return ctx },
		ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelWarn),
	}
	if tlsConfig != nil {
		// HTTP/1.1 only (no h2 in NextProtos): the NBD tunnels hijack.
		srv.TLSConfig = tlsConfig
		ln = tls.NewListener(ln, tlsConfig)
	}
	log.InfoContext(ctx, "backstop listening", "http", ln.Addr().String(), "nbd", nbdLn.Addr().String(),
		"tls", tlsConfig != nil, "fingerprint", cert.fingerprint, "store", cfg.Store, "catalog", catalogName(cfg, dir))
	printBanner(out, cfg, ln.Addr(), nbdLn.Addr(), cert, tokenFile, tokenCreated)
	if cfg.AdminToken == "" {
		log.WarnContext(ctx, "no BACKSTOP_ADMIN_TOKEN set: only tokens in the catalog can call the API (create one with `server token create`)")
	}
	if onListen != nil {
		onListen(ln.Addr().String())
	}

	g, gctx := errgroup.WithContext(ctx)
	g.Go(func() error {
		if err := srv.Serve(ln); !errors.Is(err, http.ErrServerClosed) {
			return fmt.Errorf("http server: %w", err)
		}
		return nil
	})
	g.Go(func() error { return nbdServer.Serve(gctx, nbdLn) })
	g.Go(func() error { status.Run(gctx); return nil })
	g.Go(func() error { backups.RunSchedule(gctx, schedule); return nil })
	g.Go(func() error { refreshGauges(gctx); return nil })
	g.Go(func() error {
		<-gctx.Done()
		sctx, cancel := context.WithTimeout(context.WithoutCancel(gctx), shutdownTimeout)
		defer cancel()
		log.InfoContext(sctx, "shutting down")
		return errors.Join(srv.Shutdown(sctx), nbdServer.Shutdown(sctx))
	})
	return g.Wait()
}

// openedCatalog is a catalog the server opened and closes.
type openedCatalog interface {
	backup.Catalog
	Close() error
}

// pgCatalog gives the Postgres catalog's Close the error result of the
// embedded one's.
type pgCatalog struct{ *catalog.Store }

func (c pgCatalog) Close() error { c.Store.Close(); return nil }

// openCatalog opens Postgres when BACKSTOP_DATABASE_URL is set, else the
// embedded catalog in the data directory dir (which the caller made).
// Both apply pending migrations.
// pgConfig, when set, adjusts the Postgres catalog's configuration (the
// query tracer).
func openCatalog(ctx context.Context, cfg Config, dir string, log *slog.Logger, pgConfig func(catalog.Config) catalog.Config) (openedCatalog, error) {
	if !cfg.embeddedCatalog() {
		pcfg := catalog.DefaultConfig(secret.String(cfg.DatabaseURL))
		if pgConfig != nil {
			pcfg = pgConfig(pcfg)
		}
		cat, err := catalog.Open(ctx, pcfg, log)
		if err != nil {
			return nil, fmt.Errorf("open catalog: %w", err)
		}
		return pgCatalog{cat}, nil
	}
	cat, err := sqlitecat.Open(ctx, sqlitecat.DefaultConfig(catalogPath(dir)), log)
	if err != nil {
		return nil, fmt.Errorf("open embedded catalog %s: %w", catalogPath(dir), err)
	}
	return cat, nil
}

// catalogName says which catalog is in use, for the log.
func catalogName(cfg Config, dir string) string {
	if cfg.embeddedCatalog() {
		return catalogPath(dir)
	}
	return "postgres"
}

// openCatalogCmd opens the catalog for a one-shot command (migrate, token
// create). It takes no data directory lock: the embedded catalog is safe to
// open next to a running server, which is how an admin creates tokens.
func openCatalogCmd(ctx context.Context, cfg Config, log *slog.Logger) (openedCatalog, error) {
	dir := ""
	if cfg.embeddedCatalog() {
		var err error
		if dir, err = ensureDataDir(cfg.DataDir); err != nil {
			return nil, err
		}
	}
	return openCatalog(ctx, cfg, dir, log, nil)
}

// migrate applies the catalog's pending migrations.
func migrate(ctx context.Context, cfg Config, log *slog.Logger) error {
	if !cfg.embeddedCatalog() {
		return catalog.Migrate(ctx, secret.String(cfg.DatabaseURL), log)
	}
	cat, err := openCatalogCmd(ctx, cfg, log)
	if err != nil {
		return err
	}
	return cat.Close()
}

// certInfo is what the banner says about the server's certificate; an
// empty fingerprint means plain HTTP.
type certInfo struct {
	path        string
	fingerprint string // SHA-256, AA:BB:… as PVE pins it
	generated   bool   // the data directory's self-signed certificate
	created     bool   // generated on this start
}

// printBanner tells the operator where the server answers and how to
// authenticate: the generated token itself on the start that made it,
// later only the file that holds it. With TLS it shows the certificate's
// fingerprint and the pvesm command that pins it.
func printBanner(w io.Writer, cfg Config, httpAddr, nbdAddr net.Addr, cert certInfo, tokenFile string, tokenCreated bool) {
	scheme := "http"
	if cert.fingerprint != "" {
		scheme = "https"
	}
	api := displayAddr(httpAddr)
	base := scheme + "://" + api
	nbdHost := displayAddr(nbdAddr)
	if cfg.NBDAdvertise != "" {
		nbdHost = cfg.NBDAdvertise
	}
	// One write, so that a reader of the output (a log collector, a test
	// waiting for the banner) never sees half of it.
	var b strings.Builder
	fmt.Fprintf(&b, "Backstop is running.\n  API:       %s/api/v1/\n  Dashboard: %s/\n  NBD:       nbd://%s\n", base, base, nbdHost)
	switch {
	case tokenCreated:
		fmt.Fprintf(&b, "  Admin token (shown once; kept in %s):\n    %s\n", tokenFile, string(cfg.AdminToken))
	case tokenFile != "":
		fmt.Fprintf(&b, "  Admin token: in %s\n", tokenFile)
	}
	switch {
	case cert.fingerprint == "":
		fmt.Fprintf(&b, "  TLS:       off (PVE connects only over HTTPS: put a TLS-terminating proxy in front)\n")
	default:
		what := ""
		switch {
		case cert.created:
			what = " (self-signed, generated now)"
		case cert.generated:
			what = " (self-signed)"
		}
		fmt.Fprintf(&b, "  TLS:       %s%s\n  Fingerprint (SHA-256):\n    %s\n", cert.path, what, cert.fingerprint)
		host, port, _ := net.SplitHostPort(api)
		fmt.Fprintf(&b, "  Add it to Proxmox VE (on one node; make the token with `server token create --name pve --role backup`):\n"+
			"    pvesm add backstop backstop --server %s --port %s --fingerprint %s --token 'bst_…'\n", host, port, cert.fingerprint)
	}
	_, _ = io.WriteString(w, b.String())
}

// displayAddr is a listen address as a client would dial it: a wildcard
// host becomes this machine's name.
func displayAddr(a net.Addr) string {
	tcp, ok := a.(*net.TCPAddr)
	if !ok || !tcp.IP.IsUnspecified() {
		return a.String()
	}
	host, err := os.Hostname()
	if err != nil || host == "" {
		host = "localhost"
	}
	return net.JoinHostPort(host, strconv.Itoa(tcp.Port))
}

// statusInterval is how often GET /status figures are recomputed.
const statusInterval = 5 * time.Second

func openStore(ctx context.Context, cfg Config, log *slog.Logger) (*chunkstore.Store, error) {
	scfg := chunkstore.DefaultConfig()
	scfg.URL = cfg.Store
	scfg.AccessKey = cfg.S3AccessKey
	scfg.SecretKey = secret.String(cfg.S3SecretKey)
	if cfg.EncryptionKeyFile != "" {
		key, err := chunkstore.LoadKeyFile(cfg.EncryptionKeyFile)
		if err != nil {
			return nil, err
		}
		scfg.EncryptionKey = key
	}
	store, err := chunkstore.Open(ctx, scfg, log)
	if err != nil {
		return nil, fmt.Errorf("open chunk store: %w", err)
	}
	return store, nil
}
