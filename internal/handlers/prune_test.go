package handlers_test

import (
	"net/http"
	"testing"
)

func TestPrune_DryRunAndReal(t *testing.T) {
	s := newTestServer(t)
	bk := s.mustToken("backup")
	var names []string
	for i, at := range []int64{1764000000, 1764086400, 1764172800, 1764259200} { // four days
		b := s.openBackup(bk, 120, "qemu", at)
		s.commit(bk, b.ID)
		names = append(names, b.Name)
		if i == 0 {
			wantStatus(t, s.doJSON("PATCH", "/api/v1/snapshots/"+b.Name, bk, map[string]any{"protected": true}), http.StatusOK)
		}
	}
	other := s.openBackup(bk, 121, "qemu", 1764000000) // another group: untouched by vmid 120's rules
	s.commit(bk, other.ID)

	marks := func(dry bool) map[string]string {
		r := s.doJSON("POST", "/api/v1/prune", bk, map[string]any{"vmid": 120, "type": "qemu", "keep": map[string]any{"last": 2}, "dry_run": dry})
		wantStatus(t, r, http.StatusOK)
		var list []struct{ Name, Mark string }
		r.json(t, &list)
		out := map[string]string{}
		for _, m := range list {
			out[m.Name] = m.Mark
		}
		return out
	}
	want := map[string]string{names[3]: "keep", names[2]: "keep", names[1]: "remove", names[0]: "protected"}
	got := marks(true)
	for n, w := range want {
		if got[n] != w {
			t.Fatalf("dry run: %s is %q, want %q (all: %v)", n, got[n], w, got)
		}
	}
	if len(got) != 4 {
		t.Fatalf("dry run marked %d snapshots, want the 4 of vmid 120", len(got))
	}
	wantStatus(t, s.do("GET", "/api/v1/snapshots/"+names[1], bk, "", nil), http.StatusOK) // dry run deleted nothing
	marks(false)
	wantProblem(t, s.do("GET", "/api/v1/snapshots/"+names[1], bk, "", nil), http.StatusNotFound, "not_found")
	for _, n := range []string{names[0], names[2], names[3], other.Name} {
		wantStatus(t, s.do("GET", "/api/v1/snapshots/"+n, bk, "", nil), http.StatusOK)
	}
	wantProblem(t, s.doJSON("POST", "/api/v1/prune", s.mustToken("read"), map[string]any{"keep": map[string]any{"last": 1}}), http.StatusForbidden, "forbidden")
	wantProblem(t, s.doJSON("POST", "/api/v1/prune", bk, map[string]any{"keep": map[string]any{"last": -1}}), http.StatusBadRequest, "bad_request")
}
