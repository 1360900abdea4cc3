package backup_test

import (
	"context"
	"errors"
	"log/slog"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/backstop-pve/backstop/internal/backup"
)

func TestParseKeepOptions(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want backup.KeepOptions
		err  bool
	}{
		{in: "last=3,daily=7,weekly=4", want: backup.KeepOptions{Last: 3, Daily: 7, Weekly: 4}},
		{in: "keep-last=3, keep-hourly=1,keep-monthly=2,keep-yearly=1", want: backup.KeepOptions{Last: 3, Hourly: 1, Monthly: 2, Yearly: 1}},
		{in: "keep-daily=0,keep-weekly=2", want: backup.KeepOptions{Weekly: 2}},
		{in: "", err: true},
		{in: "last=0", err: true},
		{in: "last=-1", err: true},
		{in: "last", err: true},
		{in: "fortnightly=2", err: true},
		{in: "last=x", err: true},
	} {
		got, err := backup.ParseKeepOptions(tc.in)
		if tc.err {
			if !errors.Is(err, backup.ErrInvalid) {
				t.Errorf("ParseKeepOptions(%q) = %+v, %v; want ErrInvalid", tc.in, got, err)
			}
			continue
		}
		if err != nil || got != tc.want {
			t.Errorf("ParseKeepOptions(%q) = %+v, %v; want %+v", tc.in, got, err, tc.want)
		}
		if again, err := backup.ParseKeepOptions(got.String()); err != nil || again != got {
			t.Errorf("ParseKeepOptions(%q) does not read back %q: %+v, %v", got.String(), tc.in, again, err)
		}
	}
}

// TestSchedule_OncePerIntervalAcrossReplicas: two replicas with the same
// GC schedule run it once per interval between them.
func TestSchedule_OncePerIntervalAcrossReplicas(t *testing.T) {
	e := newEnv(t)
	var runs atomic.Int32
	count := func(stage string) {
		if stage == "gc:cutoff" {
			runs.Add(1)
		}
	}
	e.setHook(count)
	cfg := backup.DefaultServiceConfig()
	cfg.Hook = count
	other := backup.NewService(slog.New(slog.DiscardHandler), cfg, e.cat, e.store, e.store, e.disks)
	defer other.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	sch := backup.Schedule{GCInterval: 2 * time.Second, Check: 50 * time.Millisecond}
	var wg sync.WaitGroup
	wg.Go(func() { e.svc.RunSchedule(ctx, sch) })
	wg.Go(func() { other.RunSchedule(ctx, sch) })
	wg.Wait()
	if n := runs.Load(); n != 2 {
		t.Fatalf("%d scheduled GC runs in 3 s with an interval of 2 s on two replicas, want 2", n)
	}
}

// TestSchedule_PruneAndVerify: a prune schedule applies its keep options to
// every namespace, a verify schedule verifies what is left.
func TestSchedule_PruneAndVerify(t *testing.T) {
	e := newEnv(t)
	for i := range 3 {
		e.backup(100, hour(i), disk(i+1))
	}
	keep, err := backup.ParseKeepOptions("keep-last=1")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		e.svc.RunSchedule(ctx, backup.Schedule{PruneInterval: time.Hour, PruneKeep: keep,
			VerifyInterval: time.Hour, Check: 20 * time.Millisecond})
	}()
	defer func() { cancel(); <-done }()
	deadline := time.Now().Add(20 * time.Second)
	for {
		list, err := e.cat.ListSnapshots(context.Background(), backup.DefaultNamespace, 0, "")
		if err != nil {
			t.Fatal(err)
		}
		if len(list) == 1 && list[0].VerifyState == backup.VerifyOK && list[0].BackupTime.Equal(hour(2)) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("after 20 s of schedules: %+v", list)
		}
		time.Sleep(50 * time.Millisecond)
	}
}
