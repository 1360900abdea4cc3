package main

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

// syncBuffer is a bytes.Buffer safe for the exporter's goroutine.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) Bytes() []byte {
	s.mu.Lock()
	defer s.mu.Unlock()
	return bytes.Clone(s.b.Bytes())
}

// startServerCfg is startServer with a hook on the loaded Config and a
// logger of the caller's; stop shuts the server down (flushing telemetry).
func startServerCfg(t *testing.T, env map[string]string, log *slog.Logger, mutate func(*Config)) (base string, stop func()) {
	t.Helper()
	cfg, _, err := loadConfig("test", func(k string) string { return env[k] },
		[]string{"--listen", "127.0.0.1:0", "--nbd-listen", "127.0.0.1:0", "--tls=off"}, io.Discard)
	if err != nil {
		t.Fatalf("config: %v", err)
	}
	mutate(&cfg)
	ctx, cancel := context.WithCancel(context.Background())
	addr := make(chan string, 1)
	done := make(chan error, 1)
	go func() { done <- serve(ctx, cfg, log, io.Discard, func(a string) { addr <- a }) }()
	var once sync.Once
	stop = func() {
		once.Do(func() {
			cancel()
			select {
			case err := <-done:
				if err != nil {
					t.Errorf("serve returned %v after shutdown", err)
				}
			case <-time.After(30 * time.Second):
				t.Error("server did not shut down")
			}
		})
	}
	t.Cleanup(stop)
	select {
	case a := <-addr:
		return "http://" + a, stop
	case err := <-done:
		t.Fatalf("serve: %v", err)
	case <-time.After(30 * time.Second):
		t.Fatal("server did not start")
	}
	return "", stop
}

// consoleSpan is what the console exporter writes of a span.
type consoleSpan struct {
	Name        string
	SpanContext struct{ TraceID, SpanID string }
	Parent      struct{ TraceID, SpanID string }
	Links       []struct {
		SpanContext struct{ TraceID, SpanID string }
	}
	Status struct{ Code string }
}

func parseSpans(t *testing.T, b []byte) []consoleSpan {
	t.Helper()
	var out []consoleSpan
	dec := json.NewDecoder(bytes.NewReader(b))
	for dec.More() {
		var s consoleSpan
		if err := dec.Decode(&s); err != nil {
			t.Fatalf("console exporter output: %v", err)
		}
		out = append(out, s)
	}
	return out
}

// TestTracing_BackupIsOneTrace runs a disk backup with
// OTEL_TRACES_EXPORTER=console and a caller's traceparent, and checks the
// spans: the request span continues the caller's trace; the pull's job
// span (which runs after the request has returned) is a child of the
// request span in the same trace, with a link to it as well; the S3 calls
// of the pull and its catalog queries are in that trace under the job
// span; and the access log line of the request carries the trace id.
func TestTracing_BackupIsOneTrace(t *testing.T) {
	env, _ := opsEnv(t)
	env["OTEL_TRACES_EXPORTER"] = "console"
	env["OTEL_SERVICE_NAME"] = "backstop-trace-test"
	spans, logs := &syncBuffer{}, &syncBuffer{}
	log := slog.New(slog.NewJSONHandler(logs, nil))
	base, stop := startServerCfg(t, env, log, func(c *Config) { c.OTel.Console = spans })
	if base == "" {
		return
	}
	dir := t.TempDir()
	raw, _, _ := opsImage(t, dir)
	img := filepath.Join(dir, "disk.qcow2")
	tool(t, "qemu-img", "convert", "-f", "raw", "-O", "qcow2", raw, img)
	uri := startQemuNBD(t, img)

	const traceID = "4bf92f3577b34da6a3ce929d0e0e4736"
	c := opsClient{t: t, base: base}
	var s opsSession
	c.must("POST", "/api/v1/backups", map[string]any{"storage": "bs", "vmid": opsVMID, "type": "qemu", "backup_time": backupTime},
		http.StatusCreated, &s)
	body, _ := json.Marshal(map[string]any{"device": opsDevice, "size": 6 * 4 * mib, "bitmap_mode": "none", "source": map[string]any{"uri": uri}})
	req, _ := http.NewRequest("POST", base+"/api/v1/backups/"+s.ID+"/disks", bytes.NewReader(body))
	req.Header.Set("Authorization", "Bearer "+opsToken)
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("traceparent", "00-"+traceID+"-00f067aa0ba902b7-01")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	var task struct {
		TaskID string `json:"task_id"`
	}
	err = json.NewDecoder(resp.Body).Decode(&task)
	resp.Body.Close()
	if err != nil || resp.StatusCode != http.StatusAccepted {
		t.Fatalf("start pull: %d %v", resp.StatusCode, err)
	}
	for deadline := time.Now().Add(time.Minute); ; time.Sleep(50 * time.Millisecond) {
		var tv struct{ State string }
		c.must("GET", "/api/v1/tasks/"+task.TaskID, nil, http.StatusOK, &tv)
		if tv.State == "ok" {
			break
		}
		if tv.State != "running" || time.Now().After(deadline) {
			t.Fatalf("pull task %s", tv.State)
		}
	}
	stop() // flushes the batched spans

	all := parseSpans(t, spans.Bytes())
	var reqSpan, job *consoleSpan
	byID := map[string]*consoleSpan{}
	for i := range all {
		sp := &all[i]
		byID[sp.SpanContext.SpanID] = sp
		switch sp.Name {
		case "POST /api/v1/backups/{id}/disks":
			reqSpan = sp
		case "backup.pull_disk":
			job = sp
		}
	}
	if reqSpan == nil || job == nil {
		var names []string
		for _, sp := range all {
			names = append(names, sp.Name)
		}
		t.Fatalf("request span or job span missing; spans: %v", names)
	}
	if reqSpan.SpanContext.TraceID != traceID {
		t.Errorf("request span in trace %s, want the caller's %s", reqSpan.SpanContext.TraceID, traceID)
	}
	if job.SpanContext.TraceID != traceID || job.Parent.SpanID != reqSpan.SpanContext.SpanID {
		t.Errorf("job span: trace %s parent %s, want trace %s parent %s (the request span)",
			job.SpanContext.TraceID, job.Parent.SpanID, traceID, reqSpan.SpanContext.SpanID)
	}
	if len(job.Links) != 1 || job.Links[0].SpanContext.SpanID != reqSpan.SpanContext.SpanID {
		t.Errorf("job span links %+v, want one to the request span", job.Links)
	}
	if job.Status.Code != "Unset" {
		t.Errorf("job span status %s", job.Status.Code)
	}
	// underJob reports whether sp descends from the job span.
	underJob := func(sp *consoleSpan) bool {
		for p := byID[sp.Parent.SpanID]; p != nil; p = byID[p.Parent.SpanID] {
			if p == job {
				return true
			}
		}
		return false
	}
	counts := map[string]int{}
	for i := range all {
		sp := &all[i]
		if sp.SpanContext.TraceID == traceID && underJob(sp) {
			counts[strings.Fields(sp.Name)[0]]++
		}
	}
	t.Logf("spans under the job span by name: %v", counts)
	// Three new chunks (see opsImage) and the index object.
	if counts["chunkstore.put_chunk"] != 3 || counts["chunkstore.put_object"] != 1 {
		t.Errorf("S3 spans under the job span: %v, want 3 put_chunk and 1 put_object", counts)
	}
	if counts["pg"] == 0 {
		t.Errorf("no catalog query spans under the job span: %v", counts)
	}

	// The access line of the request names its trace and request id.
	var found bool
	for _, line := range strings.Split(string(logs.Bytes()), "\n") {
		if !strings.Contains(line, `"msg":"http request"`) || !strings.Contains(line, "/disks") {
			continue
		}
		var rec map[string]any
		if err := json.Unmarshal([]byte(line), &rec); err != nil {
			t.Fatal(err)
		}
		found = true
		if rec["trace_id"] != traceID || rec["span_id"] != reqSpan.SpanContext.SpanID || rec["request_id"] == "" {
			t.Errorf("access line %s: want trace_id %s, span_id %s and a request_id", line, traceID, reqSpan.SpanContext.SpanID)
		}
	}
	if !found {
		t.Error("no access line for the pull request")
	}
}
