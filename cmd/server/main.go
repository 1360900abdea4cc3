// Command server is the Backstop service: the REST API that PVE's plugin,
// the dashboard and ops scripts call, the NBD puller and restore exports,
// over a Postgres catalog and an S3 (or local directory) chunk store.
//
//	server [serve] [flags]     run the service (default)
//	server migrate [flags]     apply catalog migrations and exit
//	server token create …      create an API token and print it once
//	server healthcheck [--url]  probe /readyz (the container's health check)
//
// Configuration comes from BACKSTOP_* environment variables and the
// matching flags; `server -h` lists them.
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
	"strings"
	"syscall"
	"time"

	"golang.org/x/sync/errgroup"

	"github.com/backstop-pve/backstop/internal/backup"
	"github.com/backstop-pve/backstop/internal/catalog"
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
		return serve(ctx, cfg, newLogger(cfg, stderr), nil)
	case "migrate":
		cfg, _, err := loadConfig("server migrate", getenv, args, stderr)
		if err != nil {
			return err
		}
		return catalog.Migrate(ctx, secret.String(cfg.DatabaseURL), newLogger(cfg, stderr))
	case "token":
		return runToken(ctx, args, getenv, stdout, stderr)
	case "healthcheck":
		return runHealthcheck(ctx, args, stdout, stderr)
	case "help", "-h", "--help":
		fmt.Fprintln(stdout, "usage: server [serve|migrate|token create] [flags]; server serve -h lists the flags")
		return nil
	}
	return fmt.Errorf("unknown command %q (want serve, migrate or token)", cmd)
}

// shutdownTimeout bounds the graceful shutdown of the HTTP server.
const shutdownTimeout = 30 * time.Second

// serve runs the service until ctx ends. onListen, when set, is told the
// HTTP address once it accepts connections (tests listen on :0).
func serve(ctx context.Context, cfg Config, log *slog.Logger, onListen func(addr string)) (err error) {
	if cfg.Store == "" {
		return errors.New("BACKSTOP_STORE is required (s3://bucket?endpoint=host:port or file:///path)")
	}
	tel, log, err := setupTelemetry(ctx, cfg, log)
	if err != nil {
		return err
	}
	defer func() { err = errors.Join(err, tel.Shutdown(context.WithoutCancel(ctx))) }()
	cat, err := catalog.Open(ctx, tel.catalog(catalog.DefaultConfig(secret.String(cfg.DatabaseURL))), log)
	if err != nil {
		return fmt.Errorf("open catalog: %w", err)
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

	var tlsConfig *tls.Config
	if cfg.TLSCert != "" {
		cert, err := tls.LoadX509KeyPair(cfg.TLSCert, cfg.TLSKey)
		if err != nil {
			return fmt.Errorf("load TLS certificate: %w", err)
		}
		tlsConfig = &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}
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
		"tls", tlsConfig != nil, "store", cfg.Store)
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
