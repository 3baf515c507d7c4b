package cloud

import (
	"context"
	"fmt"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/ecs-localdisk/ecs-localdisk-csi/pkg/disk"
)

func TestDeviceNames(t *testing.T) {
	for start, want := range map[string]string{
		"vdb":   "vdb vdc vdd",
		"vdy":   "vdy vdz vdaa",
		"vdzz":  "vdzz vdaaa vdaab",
		"xvdb":  "xvdb xvdc xvdd",
		"loop7": "loop7 loop8 loop9",
		"sdz":   "sdz sdaa sdab",
	} {
		if got := strings.Join(deviceNames(start, 3), " "); got != want {
			t.Errorf("deviceNames(%s) = %q, want %q", start, got, want)
		}
	}
}

func TestPinEncoding(t *testing.T) {
	p := Pin{ID: newPinID(), InstanceID: "i-x", FirstName: "vdb"}
	b, err := encodePin(p)
	if err != nil || len(b) != PinBytes {
		t.Fatal(err)
	}
	got, ok := decodePin(b)
	if !ok || got != p {
		t.Fatalf("round trip: %+v %v", got, ok)
	}
	bad := append([]byte(nil), b...)
	bad[len(pinMagic)+5] ^= 1 // inside the JSON: the checksum no longer matches
	for name, buf := range map[string][]byte{"zeros": make([]byte, PinBytes), "flipped": bad, "truncated": b[:40]} {
		if _, ok := decodePin(buf); ok {
			t.Errorf("%s decoded as a pin", name)
		}
	}
}

// memPinner keeps pins in memory, keyed by device path.
type memPinner struct {
	mu   sync.Mutex
	pins map[string]Pin
}

func (m *memPinner) Read(path string) (Pin, bool, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	p, ok := m.pins[path]
	return p, ok, nil
}

func (m *memPinner) Write(path string, p Pin) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.pins[path] = p
	return nil
}

func TestSourceFallbackPinsSerialLessDisks(t *testing.T) {
	ctx := context.Background()
	f := newFake(t)
	f.Types[testInstance.Type] = InstanceType{LocalStorageAmount: 3, LocalStorageGiB: 5500, LocalStorageCategory: "local_hdd_pro"}
	for i := 0; i < 3; i++ { // pre-2020 disks: the guest sees no serial
		f.Disks = append(f.Disks, FakeDisk{ID: fmt.Sprintf("d-old%d", i), Category: "local_hdd_pro", InstanceID: testInstance.ID, SizeGiB: 5500})
	}
	used := dev("vdd", "byid:ata-OLD-vdd", 5500<<30)
	used.Facts.Signatures = []string{"xfs"}
	devices := disk.NewFakeSource(dev("vda", "byid:ata-SYS", 40<<30), dev("vdb", "byid:ata-OLD-vdb", 5500<<30), dev("vdc", "byid:ata-OLD-vdc", 5500<<30), used)
	pins := &memPinner{pins: map[string]Pin{}}
	newSrc := func() *Source {
		s, err := NewSource(SourceConfig{Metadata: NewMetadata(f.Metadata.URL), API: newAPI(t, f, nil), Devices: devices,
			CachePath: filepath.Join(t.TempDir(), "c"), Fallback: &Fallback{StartWith: "vdb", Pinner: pins}})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(s.Close)
		return s
	}
	// Discovery only reads: the blank disks are left out, unpinned.
	src := newSrc()
	disks, problems, err := src.Discover(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(disks) != 0 || len(pins.pins) != 0 || !strings.Contains(fmt.Sprint(problems), "not pinned yet") {
		t.Fatalf("Discover pinned %d disks (%d pins), problems %v; want none pinned", len(disks), len(pins.pins), problems)
	}
	if err := src.PinBlank(ctx); err != nil {
		t.Fatal(err)
	}
	disks, problems, err = src.Discover(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(disks) != 2 || len(pins.pins) != 2 {
		t.Fatalf("pinned %d disks (%d pins): %+v", len(disks), len(pins.pins), disks)
	}
	for _, d := range disks {
		if !strings.HasPrefix(d.ID, "pin-") || d.Category != "local_hdd_pro" || d.ReservedTailBytes != PinReserve || d.Name == "vdd" || d.Name == "vda" {
			t.Errorf("disk %+v", d)
		}
	}
	text := fmt.Sprint(problems)
	if !strings.Contains(text, "/dev/vdd: carries data but no pin") || !strings.Contains(text, "/dev/vda") {
		t.Fatalf("problems: %s", text)
	}
	// The disks are renamed (vdb <-> vdc): the pins still tell them apart.
	first := map[string]string{disks[0].Name: disks[0].ID, disks[1].Name: disks[1].ID}
	pins.pins["/dev/vdb"], pins.pins["/dev/vdc"] = pins.pins["/dev/vdc"], pins.pins["/dev/vdb"]
	again, _, _ := newSrc().Discover(ctx)
	for _, d := range again {
		other := map[string]string{"vdb": "vdc", "vdc": "vdb"}[d.Name]
		if d.ID != first[other] {
			t.Errorf("after the swap %s has %s, want %s", d.Name, d.ID, first[other])
		}
	}
	if id, identity, err := newSrc().Identify(ctx, "/dev/vdb"); err != nil || id != first["vdc"] || !strings.HasPrefix(identity, "pin:") {
		t.Fatalf("Identify = %s %s %v", id, identity, err)
	}
	// A pin of another instance is not taken.
	p := pins.pins["/dev/vdb"]
	p.InstanceID = "i-someone-else"
	pins.pins["/dev/vdb"] = p
	disks, problems, _ = newSrc().Discover(ctx)
	if len(disks) != 1 || !strings.Contains(fmt.Sprint(problems), "pinned on instance i-someone-else") {
		t.Fatalf("foreign pin: %+v %v", disks, problems)
	}
	// Without the fallback, none of these disks is used.
	plain := newSource(t, f, devices, filepath.Join(t.TempDir(), "c"))
	if disks, _, _ := plain.Discover(ctx); len(disks) != 0 {
		t.Fatalf("without the fallback: %+v", disks)
	}
}
