package main

import (
	"errors"
	"math"
	"testing"
	"time"
)

func TestParseSize(t *testing.T) {
	for in, want := range map[string]int64{
		"4G": 4 * gib, "1g": gib, "1GiB": gib, "512M": 512 * mib, "2.5G": 2*gib + 512*mib,
		"17M": 16 * mib, // rounded down to 4 MiB blocks
	} {
		if got, err := parseSize(in); err != nil || got != want {
			t.Errorf("parseSize(%q) = %d, %v; want %d", in, got, err, want)
		}
	}
	for _, bad := range []string{"", "x", "-1G", "8M", "0"} {
		if _, err := parseSize(bad); err == nil {
			t.Errorf("parseSize(%q) succeeded", bad)
		}
	}
}

func TestParsePhases(t *testing.T) {
	m, err := parsePhases("restore, nbd")
	if err != nil || !m["restore"] || !m["nbd"] || !m["full"] || m["restic"] {
		t.Fatalf("restore,nbd: %v %v (restore needs full)", m, err)
	}
	m, err = parsePhases("all")
	if err != nil || len(m) != len(allPhases) {
		t.Fatalf("all: %v %v", m, err)
	}
	if _, err := parsePhases("full,nope"); err == nil {
		t.Fatal("an unknown phase was accepted")
	}
}

func TestRatiosAndTargets(t *testing.T) {
	b := &bench{size: 4 * gib, img: &image{size: 4 * gib, dataBytes: 3 * gib}}
	// Three rounds; the figures are medians of per-round ratios.
	for i, f := range []float64{1, 2, 0.5} {
		b.newRound(i)
		set := func(k string, d time.Duration) {
			b.res[k] = &result{dur: time.Duration(float64(d) * f), logical: 4 * gib}
		}
		set("nbdcopy", 2*time.Second)
		set("s3put", 10*time.Second)
		set("full", 12*time.Second)
		set("restic-full", 36*time.Second)
		set("incr", 300*time.Millisecond)
		set("restic-incr", 12*time.Second)
		b.res["restore-qemu"] = &result{na: "export answers 501"}
		b.rssFull, b.rss1G = 170*mib, 135*mib
		b.endRound()
	}
	b.all[1]["full"] = &result{err: errors.New("boom")}
	st, name, ok := b.fullVsCeiling()
	if !ok || name != "S3 PUT" || st.n != 2 || math.Abs(st.med-10.0/12) > 1e-9 {
		t.Fatalf("full vs ceiling: %+v %q %v", st, name, ok)
	}
	if st, _ := b.ratio("full", "restic-full"); st.med != 3 || st.n != 2 {
		t.Fatalf("full vs restic: %+v, want 3 over 2 rounds", st)
	}
	if st, _ := b.timeStat("nbdcopy"); st.med != 2 || st.lo != 1 || st.hi != 4 {
		t.Fatalf("nbdcopy time: %+v", st)
	}
	got := map[string]string{}
	for _, tg := range b.targets() {
		got[tg.what] = tg.verdict
	}
	for what, want := range map[string]string{
		"Full backup ≥ 0.6× the smaller of the NBD and S3 PUT ceilings":                       "**met**", // 10/12 = 0.83
		"Full backup ≥ 1.5× restic's throughput":                                              "**met**",
		"Incremental, 1% dirty: ≤ 5% of the full backup's time":                               "**met**", // 2.5%
		"Incremental ≥ 10× faster than restic's second backup":                                "**met**", // 40×
		"Restore via qemu-img ≥ 0.5× the S3 GET ceiling":                                      "–",
		"Server peak RSS during the 4 GiB backup ≤ 512 MiB":                                   "**met**",
		"Peak RSS independent of image size (1 GiB vs the main image; criterion: within 25%)": "**missed**", // 1.26
	} {
		if got[what] != want {
			t.Errorf("%s: %q, want %q", what, got[what], want)
		}
	}
	if rep, _, times, problems := b.representative("full"); rep == nil || len(times) != 2 || len(problems) != 1 {
		t.Fatalf("representative of full: %v %v %v", rep, times, problems)
	}
}
