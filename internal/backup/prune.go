package backup

import (
	"fmt"
	"sort"
	"time"
)

// KeepOptions are PVE's and PBS's keep-* retention options. Zero means the
// rule is off; all zero keeps everything.
type KeepOptions struct {
	Last, Hourly, Daily, Weekly, Monthly, Yearly int
}

func (k KeepOptions) keepsSomething() bool {
	return k.Last+k.Hourly+k.Daily+k.Weekly+k.Monthly+k.Yearly > 0
}

// PruneMark is what prune does with a snapshot.
type PruneMark string

const (
	MarkKeep      PruneMark = "keep"
	MarkRemove    PruneMark = "remove"
	MarkProtected PruneMark = "protected"
)

// PruneMarks decides, for the snapshots of one group (same namespace,
// vmid and type), which to keep, with PBS/PVE semantics: the rules run in
// the order last, hourly, daily, weekly (ISO weeks), monthly, yearly; each
// keeps the newest snapshot of each of its N most recent periods that have
// snapshots, skipping periods a previous rule already covered and
// snapshots already marked; periods without snapshots do not count; a
// protected snapshot is never removed. Periods are computed in loc.
func PruneMarks(snaps []Snapshot, keep KeepOptions, loc *time.Location) map[string]PruneMark {
	list := append([]Snapshot(nil), snaps...)
	sort.SliceStable(list, func(i, j int) bool { return list[i].BackupTime.After(list[j].BackupTime) })
	mark := make(map[string]PruneMark, len(list))
	if !keep.keepsSomething() {
		for _, s := range list {
			mark[s.Name] = MarkKeep
		}
		return mark
	}
	period := func(layout func(time.Time) string) func(Snapshot) string {
		return func(s Snapshot) string { return layout(s.BackupTime.In(loc)) }
	}
	rules := []struct {
		n  int
		id func(Snapshot) string
	}{
		{keep.Last, func(s Snapshot) string { return s.Name }},
		{keep.Hourly, period(func(t time.Time) string { return t.Format("2006-01-02T15") })},
		{keep.Daily, period(func(t time.Time) string { return t.Format("2006-01-02") })},
		{keep.Weekly, period(func(t time.Time) string { y, w := t.ISOWeek(); return fmt.Sprintf("%d-W%02d", y, w) })},
		{keep.Monthly, period(func(t time.Time) string { return t.Format("2006-01") })},
		{keep.Yearly, period(func(t time.Time) string { return t.Format("2006") })},
	}
	for _, r := range rules {
		if r.n > 0 {
			markSelections(mark, list, r.n, r.id)
		}
	}
	for _, s := range list {
		if _, ok := mark[s.Name]; !ok {
			if s.Protected {
				mark[s.Name] = MarkProtected
			} else {
				mark[s.Name] = MarkRemove
			}
		}
	}
	return mark
}

// markSelections applies one rule to list (newest first): the newest
// unmarked snapshot of each new period is kept until n periods are kept;
// later snapshots of a kept period are removed; periods that an earlier
// rule kept a snapshot in are skipped.
func markSelections(mark map[string]PruneMark, list []Snapshot, n int, id func(Snapshot) string) {
	covered := map[string]bool{}
	for _, s := range list {
		if mark[s.Name] == MarkKeep {
			covered[id(s)] = true
		}
	}
	kept := map[string]bool{}
	for _, s := range list {
		if _, done := mark[s.Name]; done {
			continue
		}
		if s.Protected {
			mark[s.Name] = MarkProtected
			continue
		}
		p := id(s)
		if covered[p] {
			continue
		}
		if kept[p] {
			mark[s.Name] = MarkRemove
			continue
		}
		if len(kept) >= n {
			return
		}
		kept[p] = true
		mark[s.Name] = MarkKeep
	}
}
