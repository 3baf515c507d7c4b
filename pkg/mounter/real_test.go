package mounter

import (
	"context"
	"crypto/rand"
	"errors"
	"os"
	"os/exec"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/ecs-localdisk/ecs-localdisk-csi/internal/testutil"
)

func TestMkfsArgs(t *testing.T) {
	cases := []struct {
		fs    string
		extra []string
		want  string
	}{
		{"ext4", nil, "-q -U U -E nodiscard,lazy_itable_init=1,lazy_journal_init=1"},
		{"ext4", []string{"-m", "0", "-E", "stride=4"}, "-q -U U -m 0 -E nodiscard,lazy_itable_init=1,lazy_journal_init=1,stride=4"},
		{"ext4", []string{"-Ediscard"}, "-q -U U -E nodiscard,lazy_itable_init=1,lazy_journal_init=1,discard"},
		{"xfs", []string{"-L", "x"}, "-q -K -m uuid=U -L x"},
		{"xfs", []string{"-m", "reflink=1"}, "-q -K -m uuid=U,reflink=1"},
	}
	for _, c := range cases {
		got, err := mkfsArgs(c.fs, "U", 0, c.extra)
		if err != nil || strings.Join(got, " ") != c.want {
			t.Errorf("mkfsArgs(%s, %v) = %q, %v; want %q", c.fs, c.extra, strings.Join(got, " "), err, c.want)
		}
	}
	if got, _ := mkfsArgs("xfs", "U", 1<<30+100, []string{"-d", "agcount=4"}); strings.Join(got, " ") != "-q -K -m uuid=U -d agcount=4,size=1073741824" {
		t.Errorf("xfs size limit merged: %q", got)
	}
	if got, _ := mkfsArgs("xfs", "U", 1<<30, nil); strings.Join(got, " ") != "-q -K -m uuid=U -d size=1073741824" {
		t.Errorf("xfs size limit: %q", got)
	}
	if _, err := mkfsArgs("btrfs", "U", 0, nil); !errors.Is(err, ErrUnsupportedFS) {
		t.Errorf("btrfs: %v", err)
	}
}

func TestProbeAndFormatOnLoop(t *testing.T) {
	ctx := context.Background()
	r := New()
	l := testutil.NewLoop(t, "", 64<<20)
	p, err := r.Probe(ctx, l.Path)
	if err != nil || len(p.Signatures) != 0 || p.FSType != "" {
		t.Fatalf("blank: %+v %v", p, err)
	}
	const uuid = "0b9f8a1e-3c2d-5e4f-8a6b-7c8d9e0f1a2b"
	if err := r.Format(ctx, l.Path, "ext4", uuid, 0, []string{"-L", "lbl"}); err != nil {
		t.Fatal(err)
	}
	p, err = r.Probe(ctx, l.Path)
	if err != nil || p.FSType != "ext4" || p.UUID != uuid || p.Signatures[0] != "ext4" {
		t.Fatalf("after format: %+v %v", p, err)
	}
	out, _ := exec.Command("dumpe2fs", "-h", l.Path).CombinedOutput()
	if !strings.Contains(string(out), "Filesystem volume name:   lbl") {
		t.Fatalf("label missing:\n%s", out)
	}
	// Formatting again is refused and leaves the filesystem alone.
	if err := r.Format(ctx, l.Path, "xfs", "11111111-2222-5333-8444-555555555555", 0, nil); !errors.Is(err, ErrNotBlank) {
		t.Fatalf("second format: %v", err)
	}
	if p2, _ := r.Probe(ctx, l.Path); p2.UUID != uuid {
		t.Fatalf("filesystem changed by a refused format: %+v", p2)
	}
	// A partition table is a signature too.
	gpt := testutil.NewLoop(t, "", 64<<20)
	cmd := exec.Command("sfdisk", "--quiet", gpt.Path)
	cmd.Stdin = strings.NewReader("label: gpt\n,1M\n")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("sfdisk: %v %s", err, out)
	}
	p, err = r.Probe(ctx, gpt.Path)
	if err != nil || !strings.Contains(strings.Join(p.Signatures, ","), "gpt") {
		t.Fatalf("gpt: %+v %v", p, err)
	}
	if err := r.Format(ctx, gpt.Path, "ext4", uuid, 0, nil); !errors.Is(err, ErrNotBlank) {
		t.Fatalf("format over gpt: %v", err)
	}
	if err := r.Wipe(ctx, gpt.Path, CleanupSignatures); err != nil {
		t.Fatal(err)
	}
	if p, _ := r.Probe(ctx, gpt.Path); len(p.Signatures) != 0 {
		t.Fatalf("gpt left after wipe: %+v", p)
	}
	if err := r.Wipe(ctx, gpt.Path, "none"); !errors.Is(err, ErrUnknownPolicy) {
		t.Fatalf("unknown policy: %v", err)
	}
}

func TestWriteZeroes(t *testing.T) {
	l := testutil.NewLoop(t, "", 8<<20+4096)
	junk := make([]byte, 4096)
	rand.Read(junk)
	f, err := os.OpenFile(l.Path, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	f.WriteAt(junk, 8<<20) // the last, partial chunk
	f.WriteAt(junk, 0)
	f.Close()
	if err := writeZeroes(context.Background(), l.Path); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(l.Path)
	if err != nil || len(b) != 8<<20+4096 {
		t.Fatalf("read back %d bytes: %v", len(b), err)
	}
	for i, c := range b {
		if c != 0 {
			t.Fatalf("byte %d not zero", i)
		}
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := writeZeroes(ctx, l.Path); !errors.Is(err, context.Canceled) {
		t.Fatalf("cancelled zeroing: %v", err)
	}
}

func TestDeviceSizeAndNumber(t *testing.T) {
	r := New()
	l := testutil.NewLoop(t, "", 16<<20)
	if n, err := r.DeviceSize(l.Path); err != nil || n != 16<<20 {
		t.Fatalf("size %d %v", n, err)
	}
	if _, err := r.DeviceNumber(l.Backing); !errors.Is(err, ErrNotBlockDevice) {
		t.Fatalf("number of a regular file: %v", err)
	}
	if _, err := r.DeviceNumber("/no/such"); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("number of a missing path: %v", err)
	}
}

// TestProbeRefusesUnreadableDevice: blkid and wipefs call a device node they
// cannot open blank; Probe must fail instead, or such a device could be
// taken for a free disk.
func TestProbeRefusesUnreadableDevice(t *testing.T) {
	testutil.RequireRoot(t)
	node := t.TempDir() + "/dead"
	// Loop minor 250 is never attached by the tests: opening it fails.
	if err := unix.Mknod(node, unix.S_IFBLK|0o600, int(unix.Mkdev(7, 250))); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("blkid", "-p", node).CombinedOutput(); exitCodeOf(err) != 2 {
		t.Fatalf("premise: blkid on an unopenable node: %v %s", err, out)
	}
	if p, err := New().Probe(context.Background(), node); err == nil {
		t.Fatalf("Probe of an unopenable device = %+v, nil; want an error", p)
	}
}

func exitCodeOf(err error) int {
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		return ee.ExitCode()
	}
	return 0
}
