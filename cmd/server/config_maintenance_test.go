package main

import (
	"io"
	"strings"
	"testing"
	"time"

	"github.com/backstop-pve/backstop/internal/backup"
)

func TestLoadConfig_Maintenance(t *testing.T) {
	base := map[string]string{"BACKSTOP_DATABASE_URL": "postgres://x"}
	load := func(env map[string]string, args ...string) (Config, error) {
		all := map[string]string{}
		for k, v := range base {
			all[k] = v
		}
		for k, v := range env {
			all[k] = v
		}
		cfg, _, err := loadConfig("t", func(k string) string { return all[k] }, args, io.Discard)
		return cfg, err
	}
	cfg, err := load(nil)
	if err != nil {
		t.Fatal(err)
	}
	gc, sch, err := cfg.maintenance()
	if err != nil || gc.Grace != 24*time.Hour || gc.SessionTimeout != 36*time.Hour || sch.GCInterval != 0 ||
		sch.VerifyInterval != 0 || sch.PruneInterval != 0 {
		t.Fatalf("defaults: %+v %+v %v; want 24h grace, 36h session timeout, no schedules", gc, sch, err)
	}
	cfg, err = load(map[string]string{"BACKSTOP_GC_GRACE": "0s", "BACKSTOP_GC_INTERVAL": "6h", "BACKSTOP_VERIFY_INTERVAL": "24h",
		"BACKSTOP_VERIFY_OLDER_THAN_DAYS": "30", "BACKSTOP_PRUNE_INTERVAL": "1h", "BACKSTOP_PRUNE_KEEP": "keep-last=3,keep-daily=7"},
		"--session-timeout", "12h")
	if err != nil {
		t.Fatal(err)
	}
	gc, sch, err = cfg.maintenance()
	want := backup.Schedule{GCInterval: 6 * time.Hour, VerifyInterval: 24 * time.Hour, VerifyOlderThan: 30 * 24 * time.Hour,
		PruneInterval: time.Hour, PruneKeep: backup.KeepOptions{Last: 3, Daily: 7}, Location: time.Local}
	if err != nil || gc.Grace != 0 || gc.SessionTimeout != 12*time.Hour || sch != want {
		t.Fatalf("schedules: %+v %+v %v; want %+v", gc, sch, err, want)
	}
	_, err = load(map[string]string{"BACKSTOP_GC_GRACE": "soon", "BACKSTOP_SESSION_TIMEOUT": "0s", "BACKSTOP_GC_INTERVAL": "-1h",
		"BACKSTOP_VERIFY_OLDER_THAN_DAYS": "x", "BACKSTOP_PRUNE_INTERVAL": "1h"})
	if err == nil {
		t.Fatal("bad maintenance settings accepted")
	}
	for _, name := range []string{"BACKSTOP_GC_GRACE", "BACKSTOP_SESSION_TIMEOUT", "BACKSTOP_GC_INTERVAL",
		"BACKSTOP_VERIFY_OLDER_THAN_DAYS", "BACKSTOP_PRUNE_KEEP"} {
		if !strings.Contains(err.Error(), name) {
			t.Errorf("config error does not name %s: %v", name, err)
		}
	}
	if _, err := load(map[string]string{"BACKSTOP_PRUNE_KEEP": "fortnightly=2"}); err == nil || !strings.Contains(err.Error(), "BACKSTOP_PRUNE_KEEP") {
		t.Fatalf("bad keep options: %v", err)
	}
}
