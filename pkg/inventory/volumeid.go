package inventory

import (
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"regexp"
	"strings"
)

// A volume ID is "ld:<node>:<disk ID>:<allocation nonce>". The node and disk
// let any node RPC find the device again after a reboot renamed it; the nonce
// tells two successive volumes on the same disk apart, so a stale request for
// an old volume can never act on the new one.
const volumeIDPrefix = "ld"

// MaxVolumeIDLength is the CSI limit for volume IDs.
const MaxVolumeIDLength = 128

var (
	nodeRe  = regexp.MustCompile(`^[A-Za-z0-9]([A-Za-z0-9._-]{0,251}[A-Za-z0-9])?$`)
	diskRe  = regexp.MustCompile(`^[A-Za-z0-9.-]{1,64}$`)
	nonceRe = regexp.MustCompile(`^[0-9a-f]{12}$`)
)

// VolumeID is a parsed volume ID.
type VolumeID struct {
	Node, Disk, Nonce string
}

// String renders the volume ID.
func (v VolumeID) String() string {
	return strings.Join([]string{volumeIDPrefix, v.Node, v.Disk, v.Nonce}, ":")
}

// ParseVolumeID parses and validates a volume ID. It never panics.
func ParseVolumeID(s string) (VolumeID, error) {
	if len(s) > MaxVolumeIDLength {
		return VolumeID{}, fmt.Errorf("volume ID is %d bytes, more than %d", len(s), MaxVolumeIDLength)
	}
	parts := strings.Split(s, ":")
	if len(parts) != 4 || parts[0] != volumeIDPrefix {
		return VolumeID{}, fmt.Errorf("volume ID %q is not of the form ld:<node>:<disk>:<nonce>", s)
	}
	v := VolumeID{Node: parts[1], Disk: parts[2], Nonce: parts[3]}
	if !nodeRe.MatchString(v.Node) || !diskRe.MatchString(v.Disk) || !nonceRe.MatchString(v.Nonce) {
		return VolumeID{}, fmt.Errorf("volume ID %q has an invalid node, disk or nonce", s)
	}
	return v, nil
}

// ValidNodeID says whether node can be embedded in volume IDs.
func ValidNodeID(node string) bool { return nodeRe.MatchString(node) }

func newNonce() string {
	b := make([]byte, 6)
	if _, err := rand.Read(b); err != nil {
		panic(err) // crypto/rand never fails on Linux
	}
	return hex.EncodeToString(b)
}
