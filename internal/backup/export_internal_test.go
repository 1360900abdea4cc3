package backup

import (
	"errors"
	"net"
	"testing"
	"time"
)

func TestExports_ExpiryBindingAndRelease(t *testing.T) {
	now := time.Date(2026, 11, 25, 12, 0, 0, 0, time.UTC)
	s := &Service{exports: newExportRegistry(), now: func() time.Time { return now }}
	add := func(name, client string, ttl time.Duration) *Export {
		e := &Export{ID: "id-" + name, Name: name, ExpiresAt: now.Add(ttl), ClientIP: client, CreatedAt: now, image: &Image{}}
		s.exports.byID[e.ID], s.exports.byName[e.Name] = e, e
		return e
	}
	add("open", "", time.Minute)
	add("bound", "10.0.0.7", time.Minute)
	local := &net.TCPAddr{IP: net.ParseIP("127.0.0.1"), Port: 5000}
	other := &net.TCPAddr{IP: net.ParseIP("10.0.0.7"), Port: 6000}

	_, release, err := s.OpenExport("open", local)
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := s.OpenExport("bound", local); !errors.Is(err, ErrNotFound) {
		t.Fatalf("bound export opened from another address: %v", err)
	}
	if _, rel, err := s.OpenExport("bound", other); err != nil {
		t.Fatalf("bound export from its client: %v", err)
	} else {
		rel()
	}
	if _, _, err := s.OpenExport("nope", local); !errors.Is(err, ErrNotFound) {
		t.Fatalf("unknown name: %v", err)
	}
	if got := s.ExportNames(other); len(got) != 1 || got[0] != "bound" {
		t.Fatalf("names listed to the bound client: %v", got)
	}
	if got := s.ExportNames(local); len(got) != 0 {
		t.Fatalf("names listed to a stranger: %v", got)
	}

	now = now.Add(2 * time.Minute) // both expired
	if _, _, err := s.OpenExport("open", local); !errors.Is(err, ErrNotFound) {
		t.Fatalf("expired export opened: %v", err)
	}
	if len(s.ListExports()) != 0 {
		t.Fatal("expired exports listed")
	}
	s.expireExports()
	if _, ok := s.exports.byName["open"]; !ok {
		t.Fatal("an expired export still being read was forgotten")
	}
	if _, ok := s.exports.byName["bound"]; ok {
		t.Fatal("an expired, unused export was kept")
	}
	release()
	release() // twice is harmless
	s.expireExports()
	if len(s.exports.byName) != 0 {
		t.Fatal("expired export kept after its last connection ended")
	}
}
