package mounter

import (
	"errors"
	"strings"
	"testing"
)

func TestMkfsArgs(t *testing.T) {
	const d = Ext4Defaults
	cases := []struct {
		fs    string
		size  int64
		extra []string
		want  string
	}{
		{"ext4", 0, nil, "-q -U U -E " + d},
		{"ext4", 0, []string{"-m", "0", "-E", "stride=4"}, "-q -U U -m 0 -E " + d + ",stride=4"},
		{"ext4", 0, []string{"-Ediscard"}, "-q -U U -E " + d + ",discard"},
		// mke2fs keeps only its last -E: every user -E goes into one, in order.
		{"ext4", 0, []string{"-E", "stride=4", "-L", "x", "-Estripe_width=8"}, "-q -U U -E " + d + ",stride=4,stripe_width=8 -L x"},
		// A value that looks like an option is a value.
		{"ext4", 0, []string{"-L", "-E"}, "-q -U U -E " + d + " -L -E"},
		{"ext4", 0, []string{"-Lx", "-j", "-O", "^has_journal"}, "-q -U U -E " + d + " -Lx -j -O ^has_journal"},
		{"ext4", 1 << 30, []string{"-L", "x"}, "-q -U U -E " + d + " -L x"}, // size goes after the device
		{"xfs", 0, []string{"-L", "x"}, "-q -K -m uuid=U -L x"},
		{"xfs", 0, []string{"-m", "reflink=1"}, "-q -K -m uuid=U,reflink=1"},
		{"xfs", 0, []string{"-mreflink=1", "-m", "bigtime=1"}, "-q -K -m uuid=U,reflink=1 -m bigtime=1"},
		{"xfs", 0, []string{"-L", "-m"}, "-q -K -m uuid=U -L -m"},
		{"xfs", 0, []string{"-L", "data", "-K"}, "-q -K -m uuid=U -L data -K"},
		{"xfs", 1 << 30, nil, "-q -K -m uuid=U -d size=1073741824"},
		{"xfs", 1<<30 + 100, []string{"-d", "agcount=4"}, "-q -K -m uuid=U -d agcount=4,size=1073741824"},
		{"xfs", 1 << 30, []string{"-dagcount=4"}, "-q -K -m uuid=U -dagcount=4,size=1073741824"},
		{"xfs", 1 << 30, []string{"-dagcount=4", "-d", "su=64k,sw=2"}, "-q -K -m uuid=U -dagcount=4 -d su=64k,sw=2,size=1073741824"},
	}
	for _, c := range cases {
		got, err := mkfsArgs(c.fs, "U", c.size, c.extra)
		if err != nil || strings.Join(got, " ") != c.want {
			t.Errorf("mkfsArgs(%s, %d, %q) = %q, %v; want %q", c.fs, c.size, c.extra, strings.Join(got, " "), err, c.want)
		}
	}
	for _, c := range []struct {
		fs    string
		extra []string
		want  error
	}{
		{"btrfs", nil, ErrUnsupportedFS},
		{"", nil, ErrUnsupportedFS},
		{"ext4", []string{"-L", "x", "-E"}, ErrInvalidMkfsArgs},
		{"xfs", []string{"-m"}, ErrInvalidMkfsArgs},
		{"xfs", []string{"-d"}, ErrInvalidMkfsArgs},
	} {
		if _, err := mkfsArgs(c.fs, "U", 0, c.extra); !errors.Is(err, c.want) {
			t.Errorf("mkfsArgs(%s, %q): %v, want %v", c.fs, c.extra, err, c.want)
		}
	}
}

func TestMkfsArgv(t *testing.T) {
	got, _ := mkfsArgv("ext4", "U", "/dev/x", 1<<30+1500, []string{"-m", "0"})
	if want := "-q -U U -E " + Ext4Defaults + " -m 0 /dev/x 1048577k"; strings.Join(got, " ") != want {
		t.Errorf("ext4 argv %q, want %q", strings.Join(got, " "), want)
	}
	got, _ = mkfsArgv("xfs", "U", "/dev/x", 0, nil)
	if want := "-q -K -m uuid=U /dev/x"; strings.Join(got, " ") != want {
		t.Errorf("xfs argv %q, want %q", strings.Join(got, " "), want)
	}
	// The caller's slice is never modified.
	extra := []string{"-E", "stride=4"}
	mkfsArgv("ext4", "U", "/dev/x", 0, extra)
	if extra[1] != "stride=4" {
		t.Errorf("extra args modified: %q", extra)
	}
}
