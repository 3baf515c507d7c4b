package state

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func sample() *Record {
	r := New("node-a")
	r.Disks["loop-h1"] = &Disk{ID: "loop-h1", Identity: "loop:/x", SizeBytes: 1 << 20, Media: "ssd", Status: Free, UpdatedAt: time.Unix(1, 0).UTC()}
	r.Disks["serial-2"] = &Disk{ID: "serial-2", Identity: "serial:2", SizeBytes: 2 << 20, Media: "hdd", Status: Allocated,
		Volume: &Volume{ID: "ld:node-a:serial-2:0123456789ab", Name: "pvc-1", CapacityBytes: 2 << 20, FSUUID: "u"}}
	return r
}

func TestSaveLoadRoundTrip(t *testing.T) {
	s := NewStore(t.TempDir())
	got, err := s.Load()
	if err != nil || got != nil {
		t.Fatalf("missing file: got %v, %v; want nil, nil", got, err)
	}
	want := sample()
	if err := s.Save(want); err != nil {
		t.Fatal(err)
	}
	got, err = s.Load()
	if err != nil {
		t.Fatal(err)
	}
	if got.Node != "node-a" || len(got.Disks) != 2 || got.Disks["serial-2"].Volume.Name != "pvc-1" || got.Disks["loop-h1"].Status != Free {
		t.Fatalf("round trip lost data: %+v", got)
	}
	entries, _ := os.ReadDir(filepath.Dir(s.Path()))
	if len(entries) != 2 {
		t.Fatalf("want state.json and state.json.bak, found %v", entries)
	}
}

// damaged are the ways a state file can be unusable.
func damaged(good []byte) map[string][]byte {
	return map[string][]byte{
		"truncated":    good[:len(good)/2],
		"garbage":      []byte("\x00\x01 not json"),
		"empty":        {},
		"flipped byte": flip(good),
	}
}

// TestLoadRecoversFromCopy: a damaged or deleted main file is outvoted by
// its copy, which holds the last saved record.
func TestLoadRecoversFromCopy(t *testing.T) {
	s := NewStore(t.TempDir())
	if err := s.Save(sample()); err != nil {
		t.Fatal(err)
	}
	good, _ := os.ReadFile(s.Path())
	cases := damaged(good)
	cases["deleted"] = nil
	for name, b := range cases {
		t.Run(name, func(t *testing.T) {
			if err := os.WriteFile(s.Path(), b, 0o600); err != nil {
				t.Fatal(err)
			}
			if b == nil {
				os.Remove(s.Path())
			}
			r, err := NewStore(filepath.Dir(s.Path())).Load()
			if err != nil || r == nil || r.Disks["serial-2"].Volume.Name != "pvc-1" || r.Generation != 1 {
				t.Fatalf("Load = %+v, %v; want the saved record from the copy", r, err)
			}
		})
	}
}

// TestLoadPrefersNewerCopy: an older main file put back (a restored
// backup) loses against the newer copy, and the reverse; a damaged copy
// does not hide a good main file.
func TestLoadPrefersNewerCopy(t *testing.T) {
	dir := t.TempDir()
	s := NewStore(dir)
	r := sample()
	if err := s.Save(r); err != nil {
		t.Fatal(err)
	}
	old, _ := os.ReadFile(s.Path())
	r.Disks["loop-h1"].Status = Cleaning
	r.Disks["loop-h1"].Volume = &Volume{ID: "ld:node-a:loop-h1:000000000001", Name: "pvc-2"}
	if err := s.Save(r); err != nil {
		t.Fatal(err)
	}
	newer, _ := os.ReadFile(s.Path())
	check := func(what string, want Status) {
		t.Helper()
		got, err := NewStore(dir).Load()
		if err != nil || got.Disks["loop-h1"].Status != want {
			t.Fatalf("%s: Load = %+v, %v; want loop-h1 %s", what, got, err, want)
		}
	}
	if err := os.WriteFile(s.Path(), old, 0o600); err != nil {
		t.Fatal(err)
	}
	check("older main file", Cleaning)
	if err := os.WriteFile(s.Path(), newer, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(s.BackupPath(), old, 0o600); err != nil {
		t.Fatal(err)
	}
	check("older copy (a crash between the two writes)", Cleaning)
	if err := os.WriteFile(s.BackupPath(), []byte("garbage"), 0o600); err != nil {
		t.Fatal(err)
	}
	check("damaged copy", Cleaning)
	// The next save continues the generations of what was loaded.
	s2 := NewStore(dir)
	got, err := s2.Load()
	if err != nil {
		t.Fatal(err)
	}
	if err := s2.Save(got); err != nil || got.Generation != 3 {
		t.Fatalf("save after load: generation %d, %v; want 3", got.Generation, err)
	}
}

// TestLoadRefusesWhenNoCopyIsGood: with both files unusable, Load fails
// with ErrCorrupt naming both files and what to do; it never starts fresh.
func TestLoadRefusesWhenNoCopyIsGood(t *testing.T) {
	s := NewStore(t.TempDir())
	if err := s.Save(sample()); err != nil {
		t.Fatal(err)
	}
	good, _ := os.ReadFile(s.Path())
	for name, b := range damaged(good) {
		t.Run(name, func(t *testing.T) {
			for _, p := range []string{s.Path(), s.BackupPath()} {
				if err := os.WriteFile(p, b, 0o600); err != nil {
					t.Fatal(err)
				}
			}
			r, err := NewStore(filepath.Dir(s.Path())).Load()
			if !errors.Is(err, ErrCorrupt) || r != nil {
				t.Fatalf("Load = %v, %v; want ErrCorrupt", r, err)
			}
			for _, want := range []string{s.Path(), s.BackupPath(), "restores one of the files"} {
				if !strings.Contains(err.Error(), want) {
					t.Errorf("error %q does not mention %q", err, want)
				}
			}
		})
	}
	// One file damaged and the other deleted: still no fresh start.
	os.Remove(s.BackupPath())
	if r, err := NewStore(filepath.Dir(s.Path())).Load(); !errors.Is(err, ErrCorrupt) || r != nil {
		t.Fatalf("damaged main, no copy: Load = %v, %v; want ErrCorrupt", r, err)
	}
}

// TestLoadFresh: no file at all is a node that never stored anything.
func TestLoadFresh(t *testing.T) {
	r, err := NewStore(t.TempDir()).Load()
	if r != nil || err != nil {
		t.Fatalf("Load = %v, %v; want nil, nil", r, err)
	}
}

// flip changes one character inside the record so only the checksum notices.
func flip(b []byte) []byte {
	c := append([]byte(nil), b...)
	for i := len(c) - 1; i > 0; i-- {
		if c[i] == 's' && c[i-1] == 's' { // inside "ssd"
			c[i] = 'x'
			return c
		}
	}
	panic("no ssd in sample")
}

func TestDecodeRejectsInconsistentEntry(t *testing.T) {
	r := sample()
	r.Disks["other"] = r.Disks["loop-h1"] // key does not match the entry's ID
	b, err := Encode(r)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := Decode(b); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("Decode = %v; want ErrCorrupt", err)
	}
}

func TestCloneIsDeep(t *testing.T) {
	r := sample()
	c := r.Clone()
	c.Disks["serial-2"].Volume.Name = "changed"
	c.Disks["loop-h1"].Status = Cleaning
	if r.Disks["serial-2"].Volume.Name != "pvc-1" || r.Disks["loop-h1"].Status != Free {
		t.Fatal("Clone shares memory with the original")
	}
}
