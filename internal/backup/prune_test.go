package backup_test

import (
	"fmt"
	"testing"
	"time"

	"github.com/backstop-pve/backstop/internal/backup"
)

func at(s string) time.Time {
	t, err := time.Parse("2006-01-02 15:04", s)
	if err != nil {
		panic(err)
	}
	return t
}

func snaps(times ...string) []backup.Snapshot {
	var out []backup.Snapshot
	for _, ts := range times {
		t := at(ts)
		out = append(out, backup.Snapshot{Name: backup.SnapshotName(backup.GuestQemu, 100, t), BackupTime: t})
	}
	return out
}

func name(ts string) string { return backup.SnapshotName(backup.GuestQemu, 100, at(ts)) }

// TestPruneMarks checks the keep-* semantics of the PBS and PVE
// documentation ("The retention options are processed in the order given
// above. Each option only covers backups within its time period. The next
// option does not take care of already covered backups. It will only
// consider older backups.") on the cases that tell implementations apart.
func TestPruneMarks(t *testing.T) {
	// Three backups a day (01:00, 02:00, 12:00) for five days, as in the
	// PVE manual's keep-hourly example.
	var threeADay []string
	for d := 1; d <= 5; d++ {
		for _, h := range []string{"01:00", "02:00", "12:00"} {
			threeADay = append(threeADay, fmt.Sprintf("2026-11-%02d %s", d, h))
		}
	}
	cases := []struct {
		name      string
		snaps     []string
		protected []string
		keep      backup.KeepOptions
		want      []string // kept; protected ones listed separately; all else removed
	}{
		{name: "no options keep everything", snaps: []string{"2026-11-01 10:00", "2026-11-02 10:00"},
			want: []string{"2026-11-01 10:00", "2026-11-02 10:00"}},
		{name: "keep-last", snaps: []string{"2026-11-01 10:00", "2026-11-02 10:00", "2026-11-03 10:00", "2026-11-04 10:00", "2026-11-05 10:00"},
			keep: backup.KeepOptions{Last: 3}, want: []string{"2026-11-03 10:00", "2026-11-04 10:00", "2026-11-05 10:00"}},
		{name: "protected is never removed and is no keep", snaps: []string{"2026-11-01 10:00", "2026-11-02 10:00", "2026-11-03 10:00"},
			protected: []string{"2026-11-01 10:00"}, keep: backup.KeepOptions{Last: 1}, want: []string{"2026-11-03 10:00"}},
		{name: "hourly keeps the newest of the last N hours with backups (PVE manual)", snaps: threeADay,
			keep: backup.KeepOptions{Hourly: 4}, want: []string{"2026-11-05 12:00", "2026-11-05 02:00", "2026-11-05 01:00", "2026-11-04 12:00"}},
		{name: "daily skips days an earlier rule covered", snaps: threeADay,
			keep: backup.KeepOptions{Hourly: 4, Daily: 3},
			want: []string{"2026-11-05 12:00", "2026-11-05 02:00", "2026-11-05 01:00", "2026-11-04 12:00",
				"2026-11-03 12:00", "2026-11-02 12:00", "2026-11-01 12:00"}},
		{name: "newest per day", snaps: threeADay, keep: backup.KeepOptions{Daily: 2},
			want: []string{"2026-11-05 12:00", "2026-11-04 12:00"}},
		{name: "days without backups do not count", snaps: []string{"2026-11-01 10:00", "2026-11-02 10:00", "2026-11-05 10:00", "2026-11-05 09:00"},
			keep: backup.KeepOptions{Daily: 3}, want: []string{"2026-11-01 10:00", "2026-11-02 10:00", "2026-11-05 10:00"}},
		{name: "last then daily: an older backup of a covered day is removed",
			snaps: []string{"2026-11-04 10:00", "2026-11-05 08:00", "2026-11-05 10:00"},
			keep:  backup.KeepOptions{Last: 1, Daily: 1}, want: []string{"2026-11-05 10:00", "2026-11-04 10:00"}},
		{name: "ISO weeks start on Monday", snaps: []string{"2026-01-04 10:00", "2026-01-05 10:00"}, // Sunday, Monday
			keep: backup.KeepOptions{Weekly: 1}, want: []string{"2026-01-05 10:00"}},
		{name: "ISO week across the new year is one week", snaps: []string{"2025-12-29 10:00", "2026-01-04 10:00", "2025-12-28 10:00"},
			keep: backup.KeepOptions{Weekly: 2}, want: []string{"2026-01-04 10:00", "2025-12-28 10:00"}},
		{name: "monthly and yearly", snaps: []string{"2024-06-01 10:00", "2025-01-31 10:00", "2025-02-01 10:00", "2025-02-20 10:00", "2026-03-01 10:00"},
			keep: backup.KeepOptions{Monthly: 2, Yearly: 3},
			want: []string{"2026-03-01 10:00", "2025-02-20 10:00", "2024-06-01 10:00"}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			list := snaps(c.snaps...)
			prot := map[string]bool{}
			for _, p := range c.protected {
				prot[name(p)] = true
			}
			for i := range list {
				list[i].Protected = prot[list[i].Name]
			}
			marks := backup.PruneMarks(list, c.keep, time.UTC)
			want := map[string]backup.PruneMark{}
			for _, s := range list {
				want[s.Name] = backup.MarkRemove
				if prot[s.Name] {
					want[s.Name] = backup.MarkProtected
				}
			}
			for _, k := range c.want {
				want[name(k)] = backup.MarkKeep
			}
			for n, w := range want {
				if marks[n] != w {
					t.Errorf("%s: %s, want %s", n, marks[n], w)
				}
			}
			if len(marks) != len(list) {
				t.Errorf("%d marks for %d snapshots", len(marks), len(list))
			}
		})
	}
}

func TestPruneMarks_TimeZone(t *testing.T) {
	// 23:30 UTC on the 1st is the 2nd in UTC+2: one day there, two in UTC.
	list := snaps("2026-11-01 23:30", "2026-11-02 00:30")
	if m := backup.PruneMarks(list, backup.KeepOptions{Daily: 5}, time.UTC); m[list[0].Name] != backup.MarkKeep {
		t.Fatalf("UTC: %v", m)
	}
	loc := time.FixedZone("UTC+2", 2*3600)
	if m := backup.PruneMarks(list, backup.KeepOptions{Daily: 5}, loc); m[list[0].Name] != backup.MarkRemove {
		t.Fatalf("UTC+2: %v", m)
	}
}
