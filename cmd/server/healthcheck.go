package main

import (
	"context"
	"crypto/tls"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strings"
	"time"
)

// runHealthcheck probes a URL and fails unless it answers 200: the health
// check of the container image, which has no shell, curl or wget.
//
//	server healthcheck [--url https://127.0.0.1:8280/readyz] [--timeout 5s]
//
// Without --url it probes /readyz of the server that the same environment
// (BACKSTOP_LISTEN, BACKSTOP_TLS…) configures, on loopback: https when that
// server serves TLS, including the self-signed certificate of zero-config
// mode. That URL, and any loopback https URL, is probed without certificate
// verification: the probe sends no credentials and the address is this
// host's, whose certificate is issued for its public name or self-signed.
func runHealthcheck(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("server healthcheck", flag.ContinueOnError)
	fs.SetOutput(stderr)
	target := fs.String("url", "", "URL to probe (healthz: alive; readyz: catalog and store reachable); default: /readyz of the server this environment configures, on loopback")
	timeout := fs.Duration("timeout", 5*time.Second, "how long to wait for the answer")
	if err := fs.Parse(args); err != nil {
		return err
	}
	own := *target == "" // this host's server, at its own listen address
	if own {
		u, err := localReadyURL(getenv)
		if err != nil {
			return fmt.Errorf("healthcheck: %w", err)
		}
		*target = u
	}
	u, err := url.Parse(*target)
	if err != nil {
		return fmt.Errorf("healthcheck: %w", err)
	}
	client := http.DefaultClient
	if u.Scheme == "https" && (own || isLoopbackHost(u.Hostname())) {
		tr := http.DefaultTransport.(*http.Transport).Clone()
		tr.TLSClientConfig = &tls.Config{InsecureSkipVerify: true} // loopback only, no credentials sent
		client = &http.Client{Transport: tr}
	}
	ctx, cancel := context.WithTimeout(ctx, *timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, *target, nil)
	if err != nil {
		return fmt.Errorf("healthcheck: %w", err)
	}
	resp, err := client.Do(req)
	if err != nil {
		return fmt.Errorf("healthcheck: %w", err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 1024))
	if resp.StatusCode != http.StatusOK {
		if resp.StatusCode == http.StatusBadRequest && u.Scheme == "http" && strings.Contains(string(body), "HTTPS") {
			return fmt.Errorf("healthcheck: %s answered %s: %s (the server speaks HTTPS: probe an https:// URL, or leave out --url)", *target, resp.Status, body)
		}
		return fmt.Errorf("healthcheck: %s answered %s: %s", *target, resp.Status, body)
	}
	fmt.Fprintf(stdout, "%s", body)
	return nil
}

// localReadyURL is the /readyz URL of the server the environment
// configures: its listen port on loopback (or on the listen IP when it
// names one), https unless that server runs without TLS.
func localReadyURL(getenv func(string) string) (string, error) {
	cfg, _, err := loadConfig("server healthcheck", getenv, nil, io.Discard)
	if err != nil {
		return "", fmt.Errorf("server configuration: %w", err)
	}
	host, port, _ := net.SplitHostPort(cfg.Listen) // Validate checked it
	if ip := net.ParseIP(host); ip == nil || ip.IsUnspecified() {
		host = "127.0.0.1"
	}
	scheme := "https"
	if cfg.tlsMode() == tlsPlain {
		scheme = "http"
	}
	return scheme + "://" + net.JoinHostPort(host, port) + "/readyz", nil
}

// isLoopbackHost reports whether host is localhost or a loopback IP.
func isLoopbackHost(host string) bool {
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}
