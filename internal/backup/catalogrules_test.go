package backup

import (
	"errors"
	"testing"
	"time"
)

func TestCleanFilePath(t *testing.T) {
	for _, tt := range []struct {
		path   string
		clean  bool
		parent string
	}{
		{"/", true, ""},
		{"/etc", true, "/"},
		{"/etc/hosts", true, "/etc"},
		{"/a/b/c", true, "/a/b"},
		{"", false, ""},
		{"etc", false, ""},
		{"/etc/", false, ""},
		{"//etc", false, ""},
		{"/etc/./hosts", false, ""},
		{"/etc/../root", false, ""},
		{"/..", false, ""},
		{"/a\x00b", false, ""},
		{"/\xff\xfe", true, "/"},
	} {
		if got := CleanFilePath([]byte(tt.path)); got != tt.clean {
			t.Errorf("CleanFilePath(%q) = %v, want %v", tt.path, got, tt.clean)
		}
		if tt.clean {
			if got := string(FileParentDir([]byte(tt.path))); got != tt.parent {
				t.Errorf("FileParentDir(%q) = %q, want %q", tt.path, got, tt.parent)
			}
		}
	}
}

func TestCheckNewSnapshot(t *testing.T) {
	at := time.Date(2026, 11, 26, 4, 0, 0, 0, time.UTC)
	s := Snapshot{Namespace: "default", Type: GuestQemu, VMID: 100, BackupTime: at}
	if err := CheckNewSnapshot(&s); err != nil || s.Name != "qemu-100-2026_11_26-04_00_00" {
		t.Fatalf("CheckNewSnapshot = %v, name %q", err, s.Name)
	}
	for _, bad := range []Snapshot{
		{Namespace: "default", Type: "vm", VMID: 100, BackupTime: at},
		{Namespace: "default", Type: GuestLXC, VMID: 0, BackupTime: at},
		{Namespace: "default", Type: GuestLXC, VMID: 1},
		{Namespace: "default", Type: GuestLXC, VMID: 1, BackupTime: at, Name: "lxc-2-2026_11_26-04_00_00"},
		{Namespace: "../x", Type: GuestLXC, VMID: 1, BackupTime: at},
	} {
		if err := CheckNewSnapshot(&bad); !errors.Is(err, ErrInvalid) {
			t.Errorf("CheckNewSnapshot(%+v) = %v, want ErrInvalid", bad, err)
		}
	}
	f := FileEntry{Path: []byte("/etc/hosts"), Type: "file", Size: -1}
	if err := CheckFileEntry(&f); !errors.Is(err, ErrInvalid) {
		t.Errorf("CheckFileEntry with a negative size = %v", err)
	}
}
