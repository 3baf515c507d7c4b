package cloud

import (
	"bytes"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"regexp"
	"strconv"
	"strings"
	"syscall"
)

// A pin identifies a local disk that has no serial. It is written once, on a
// blank disk, into the device's last PinBytes; filesystems on pinned disks
// end PinReserve bytes before the end of the device, so the pin survives.
const (
	PinBytes   = 4096
	PinReserve = 1 << 20
	pinMagic   = "ECS-LOCALDISK-PIN/1\n"
)

// Pin is what a pinned disk carries.
type Pin struct {
	// ID is the disk's identity, chosen at random when the disk was pinned.
	ID string `json:"id"`
	// InstanceID is the instance the disk was pinned on.
	InstanceID string `json:"instanceID"`
	// FirstName is the device name at first use, for humans.
	FirstName string `json:"firstName"`
}

// Pinner reads and writes pins.
type Pinner interface {
	// Read returns the device's pin; ok is false when it carries none.
	Read(path string) (pin Pin, ok bool, err error)
	// Write pins the device.
	Write(path string, pin Pin) error
}

// DevicePinner keeps pins in the last PinBytes of block devices.
type DevicePinner struct{}

// Read looks for a valid pin (magic, JSON, checksum) at the device's end.
func (DevicePinner) Read(path string) (Pin, bool, error) {
	f, err := os.Open(path)
	if err != nil {
		return Pin{}, false, err
	}
	defer f.Close()
	size, err := f.Seek(0, io.SeekEnd)
	if err != nil || size < PinReserve*2 {
		return Pin{}, false, fmt.Errorf("%s: too small to pin (%d bytes): %v", path, size, err)
	}
	buf := make([]byte, PinBytes)
	if _, err := f.ReadAt(buf, size-PinBytes); err != nil {
		return Pin{}, false, err
	}
	p, ok := decodePin(buf)
	return p, ok, nil
}

// Write writes the pin and syncs the device.
func (DevicePinner) Write(path string, p Pin) error {
	buf, err := encodePin(p)
	if err != nil {
		return err
	}
	// Exclusively: a device mounted or held since discovery is refused.
	f, err := os.OpenFile(path, os.O_WRONLY|syscall.O_EXCL, 0)
	if err != nil {
		return err
	}
	defer f.Close()
	size, err := f.Seek(0, io.SeekEnd)
	if err != nil || size < PinReserve*2 {
		return fmt.Errorf("%s: too small to pin (%d bytes): %v", path, size, err)
	}
	if _, err := f.WriteAt(buf, size-PinBytes); err != nil {
		return err
	}
	return f.Sync()
}

// The block is: magic, length of the JSON as decimal and a newline, the JSON,
// the hex SHA-256 of the JSON, zero padding.
func encodePin(p Pin) ([]byte, error) {
	body, err := json.Marshal(p)
	if err != nil {
		return nil, err
	}
	sum := sha256.Sum256(body)
	var b bytes.Buffer
	b.WriteString(pinMagic)
	b.WriteString(strconv.Itoa(len(body)) + "\n")
	b.Write(body)
	b.WriteString(hex.EncodeToString(sum[:]))
	if b.Len() > PinBytes {
		return nil, errors.New("pin too large")
	}
	out := make([]byte, PinBytes)
	copy(out, b.Bytes())
	return out, nil
}

var pinIDRe = regexp.MustCompile(`^[0-9a-f]{32}$`)

func decodePin(buf []byte) (Pin, bool) {
	rest, ok := bytes.CutPrefix(buf, []byte(pinMagic))
	if !ok {
		return Pin{}, false
	}
	line, rest, ok := bytes.Cut(rest, []byte("\n"))
	n, err := strconv.Atoi(string(line))
	if !ok || err != nil || n <= 0 || n+64 > len(rest) {
		return Pin{}, false
	}
	body, sum := rest[:n], rest[n:n+64]
	want := sha256.Sum256(body)
	if string(sum) != hex.EncodeToString(want[:]) {
		return Pin{}, false
	}
	var p Pin
	if json.Unmarshal(body, &p) != nil || !pinIDRe.MatchString(p.ID) {
		return Pin{}, false
	}
	return p, true
}

func newPinID() string {
	b := make([]byte, 16)
	rand.Read(b)
	return hex.EncodeToString(b)
}

// deviceNames returns n kernel names starting at start, the way the seed
// provisioner counted: vdb, vdc, ..., vdz, vdaa; names ending in a number
// (loop3, nvme0n1) count up the number.
func deviceNames(start string, n int) []string {
	out := make([]string, 0, n)
	i := len(start)
	for i > 0 && start[i-1] >= '0' && start[i-1] <= '9' {
		i--
	}
	if i < len(start) {
		num, _ := strconv.Atoi(start[i:])
		for k := 0; k < n; k++ {
			out = append(out, start[:i]+strconv.Itoa(num+k))
		}
		return out
	}
	for k := 0; k < n; k++ {
		out = append(out, letterName(start, k))
	}
	return out
}

// letterName is the k-th name after start for kernel names of the form
// <prefix><letters> (vd, sd, hd, xvd): the letters count in bijective base
// 26, as the kernel names disks (vdz, vdaa, vdab).
func letterName(start string, k int) string {
	prefix := ""
	for _, p := range []string{"xvd", "vd", "sd", "hd"} {
		if strings.HasPrefix(start, p) {
			prefix = p
			break
		}
	}
	letters := start[len(prefix):]
	n := 0
	for _, c := range letters {
		if c < 'a' || c > 'z' {
			return ""
		}
		n = n*26 + int(c-'a'+1)
	}
	n += k
	var b []byte
	for n > 0 {
		n--
		b = append([]byte{byte('a' + n%26)}, b...)
		n /= 26
	}
	return prefix + string(b)
}
