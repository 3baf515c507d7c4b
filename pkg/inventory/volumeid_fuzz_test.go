package inventory

import (
	"strings"
	"testing"
)

// volumeIDSeeds are volume IDs as the driver writes them, and near misses.
var volumeIDSeeds = []string{
	"ld:node-1:serial-D0:0123456789ab",
	"ld:cn-hangzhou.192.168.0.1:serial-BTWA12345:a1b2c3d4e5f6",
	"ld:node-a:loop-h0123456789abcdef01234567:ffffffffffff",
	"ld:n:d:000000000000",
	"ld:node-1:serial-D0:0123456789AB",  // upper-case nonce
	"ld:node-1:serial-D0:0123456789a",   // short nonce
	"ld:node-1:serial-D0",               // no nonce
	"ld:node-1:serial-D0:0123456789ab:", // trailing separator
	"xx:node-1:serial-D0:0123456789ab",
	"ld:-node:serial-D0:0123456789ab",
	"ld:node-1:serial_D0:0123456789ab",
	"ld:node-1:serial-D0:0123456789ab\n",
	"ld:node-1:serial-D0:0123456789ab\x00",
	"ld::serial-D0:0123456789ab",
	"ld:node-1::0123456789ab",
	"",
	":::",
	"some-vol-id",
	"ld:" + strings.Repeat("n", 100) + ":serial-D0:0123456789ab",
	"ld:" + strings.Repeat("n", 253) + ":d:0123456789ab",
}

// FuzzParseVolumeID: ParseVolumeID never panics, and what it accepts is at
// most MaxVolumeIDLength bytes, renders back to the same string and has
// fields that String can join unambiguously.
func FuzzParseVolumeID(f *testing.F) {
	for _, s := range volumeIDSeeds {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		v, err := ParseVolumeID(s)
		if err != nil {
			if v != (VolumeID{}) {
				t.Fatalf("ParseVolumeID(%q) failed (%v) but returned %+v", s, err, v)
			}
			return
		}
		if len(s) > MaxVolumeIDLength {
			t.Fatalf("ParseVolumeID accepted %d bytes, more than %d", len(s), MaxVolumeIDLength)
		}
		if got := v.String(); got != s {
			t.Fatalf("ParseVolumeID(%q).String() = %q", s, got)
		}
		if !wellFormedNode(v.Node) || !wellFormedDisk(v.Disk) || !wellFormedNonce(v.Nonce) {
			t.Fatalf("ParseVolumeID(%q) accepted malformed fields %+v", s, v)
		}
		if !ValidNodeID(v.Node) {
			t.Fatalf("ParseVolumeID(%q) accepted node %q that ValidNodeID refuses", s, v.Node)
		}
	})
}

// FuzzVolumeIDRoundTrip builds a volume ID from its fields: it parses back to
// the same fields exactly when every field is well formed and the whole fits
// in MaxVolumeIDLength bytes.
func FuzzVolumeIDRoundTrip(f *testing.F) {
	for _, s := range volumeIDSeeds {
		parts := strings.SplitN(s, ":", 4)
		for len(parts) < 4 {
			parts = append(parts, "")
		}
		f.Add(parts[1], parts[2], parts[3])
	}
	f.Fuzz(func(t *testing.T, node, disk, nonce string) {
		in := VolumeID{Node: node, Disk: disk, Nonce: nonce}
		s := in.String()
		want := wellFormedNode(node) && wellFormedDisk(disk) && wellFormedNonce(nonce) && len(s) <= MaxVolumeIDLength
		got, err := ParseVolumeID(s)
		switch {
		case want && err != nil:
			t.Fatalf("ParseVolumeID(%q) refused a well-formed ID: %v", s, err)
		case !want && err == nil:
			t.Fatalf("ParseVolumeID(%q) accepted %+v", s, got)
		case want && got != in:
			t.Fatalf("ParseVolumeID(%q) = %+v, want %+v", s, got, in)
		}
	})
}

// The field rules, written out without regular expressions: a node is a
// Kubernetes node name (1 to 253 of letters, digits, '.', '_', '-', starting
// and ending with a letter or digit), a disk ID 1 to 64 of letters, digits,
// '.', '-', a nonce 12 lower-case hex digits. None of them can hold ':'.
func wellFormedNode(s string) bool {
	if len(s) < 1 || len(s) > 253 || !alnum(s[0]) || !alnum(s[len(s)-1]) {
		return false
	}
	return allBytes(s, func(c byte) bool { return alnum(c) || c == '.' || c == '_' || c == '-' })
}

func wellFormedDisk(s string) bool {
	return len(s) >= 1 && len(s) <= 64 && allBytes(s, func(c byte) bool { return alnum(c) || c == '.' || c == '-' })
}

func wellFormedNonce(s string) bool {
	return len(s) == 12 && allBytes(s, func(c byte) bool { return c >= '0' && c <= '9' || c >= 'a' && c <= 'f' })
}

func alnum(c byte) bool { return c >= '0' && c <= '9' || c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' }

func allBytes(s string, ok func(byte) bool) bool {
	for i := 0; i < len(s); i++ {
		if !ok(s[i]) {
			return false
		}
	}
	return true
}
