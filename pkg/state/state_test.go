package state

import (
	"errors"
	"os"
	"path/filepath"
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
	if len(entries) != 1 {
		t.Fatalf("temporary files left behind: %v", entries)
	}
}

func TestLoadRejectsDamage(t *testing.T) {
	s := NewStore(t.TempDir())
	if err := s.Save(sample()); err != nil {
		t.Fatal(err)
	}
	good, _ := os.ReadFile(s.Path())
	cases := map[string][]byte{
		"truncated":    good[:len(good)/2],
		"garbage":      []byte("\x00\x01 not json"),
		"empty":        {},
		"flipped byte": flip(good),
	}
	for name, b := range cases {
		t.Run(name, func(t *testing.T) {
			if err := os.WriteFile(s.Path(), b, 0o600); err != nil {
				t.Fatal(err)
			}
			r, err := s.Load()
			if !errors.Is(err, ErrCorrupt) || r != nil {
				t.Fatalf("Load = %v, %v; want ErrCorrupt", r, err)
			}
		})
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
