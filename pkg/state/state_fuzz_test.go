package state

import (
	"bytes"
	"errors"
	"fmt"
	"reflect"
	"strings"
	"testing"
	"time"
)

// wrap makes a state file around record bytes, with the right checksum, so
// that fuzzing reaches the record checks behind the checksum.
func wrap(record []byte) []byte {
	record = bytes.Trim(record, " \t\r\n")
	return []byte(`{"checksum":"` + checksum(record) + `","record":` + string(record) + `}`)
}

// fullSample is a record with a disk in every status.
func fullSample() *Record {
	r := sample()
	at := time.Date(2026, 3, 1, 12, 0, 0, 5, time.FixedZone("", 3600))
	r.Disks["wwn-3"] = &Disk{ID: "wwn-3", Identity: "wwn:3", SizeBytes: 3 << 30, Media: "ssd", Category: "local_ssd_pro",
		CloudID: "d-abc", ReservedTailBytes: 4096, Status: Cleaning, CleanupPolicy: "zero", UpdatedAt: at,
		Volume: &Volume{ID: "ld:node-a:wwn-3:00000000000f", Name: "pvc-3", CapacityBytes: 3 << 30,
			Parameters: map[string]string{"fsType": "xfs", "mkfsOptions": "-L data"}, FSUUID: "x", CreatedAt: at}}
	r.Disks["serial-4"] = &Disk{ID: "serial-4", Status: Failed, Reason: "wipefs: I/O error", CleanupPolicy: "shred",
		Volume: &Volume{ID: "ld:node-a:serial-4:0000000000aa", Name: "pvc-4"}}
	r.Problems = []string{"device /dev/vdz is not known to the cloud"}
	return r
}

// corruptSamples break one invariant each; the name is the disk the error
// must name.
func corruptSamples() map[string]*Record {
	out := map[string]*Record{}
	r := sample()
	r.Disks["serial-2"].Volume = nil
	out["serial-2"] = r // allocated without a volume
	r = sample()
	r.Disks["serial-2"].Volume.ID = ""
	out["serial-2 "] = r // allocated, volume without an ID
	r = sample()
	r.Disks["loop-h1"].Volume = &Volume{ID: "ld:node-a:loop-h1:0123456789ab", Name: "x"}
	out["loop-h1"] = r // free with a volume
	r = sample()
	r.Disks["serial-3"] = &Disk{ID: "serial-3", Status: Allocated, Volume: &Volume{ID: r.Disks["serial-2"].Volume.ID, Name: "pvc-1"}}
	out["serial-3"] = r // one volume ID on two disks
	r = sample()
	r.Disks["loop-h1"].Status = "reserved"
	out["loop-h1 "] = r // unknown status
	return out
}

// FuzzDecode: Decode never panics; it refuses with ErrCorrupt or returns a
// record that satisfies the invariants, re-encodes, and decodes again to an
// equal record.
func FuzzDecode(f *testing.F) {
	for _, r := range []*Record{New("node-a"), sample(), fullSample()} {
		b, err := Encode(r)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b, false)
		env := bytes.Index(b, []byte(`"record": `))
		f.Add(b[env+len(`"record": `):len(b)-2], true) // the record alone
	}
	for _, r := range corruptSamples() {
		b, err := Encode(r)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b, false)
	}
	for _, s := range []string{
		`{"version":1,"node":"n","disks":null}`,
		`{"version":1,"node":"n","disks":{"a":null}}`,
		`{"version":1,"node":"n","disks":{"a":{"id":"a","status":"free","updatedAt":"2026-01-01T00:00:00+00:00"}},"problems":[]}`,
		`{"version":1,"node":"n","disks":{"a":{"id":"a","status":"allocated","volume":{"id":"v","parameters":{}}}}}`,
		`{"version":1,"disks":{"a":{"id":"a","status":"cleaning","volume":{"id":"v"}},"b":{"id":"b","status":"failed","volume":{"id":"v"}}}}`,
		`{"version":1,"generation":7,"node":"n","disks":{"a":{"id":"a","status":"allocated","volume":{"id":"v","format":"started","createdAt":"0000-01-01T00:00:00+01:00"},"updatedAt":"9999-12-31T23:59:59.123456789-01:00"}}}`,
		`{"version":2,"node":"n","disks":{}}`,
		`{"Version":1,"version":1,"disks":{"a":{"ID":"b","id":"a","status":"free"}}}`,
		`[]`, `null`, `{}`, `"x"`,
	} {
		f.Add([]byte(s), true)
	}
	f.Add([]byte(`{"checksum":"sha256:00","record":{}}`), false)
	f.Add([]byte("\x00{"), false)

	f.Fuzz(func(t *testing.T, data []byte, wrapRecord bool) {
		if wrapRecord {
			data = wrap(data)
		}
		r, err := Decode(data)
		if err != nil {
			if !errors.Is(err, ErrCorrupt) || r != nil {
				t.Fatalf("Decode = %v, %v; want nil and ErrCorrupt", r, err)
			}
			return
		}
		if err := checkDisks(r.Disks); err != nil || r.Disks == nil {
			t.Fatalf("Decode returned a record breaking its invariants: %v", err)
		}
		b, err := Encode(r)
		if err != nil {
			t.Fatalf("Decode accepted a record that Encode refuses: %v", err)
		}
		again, err := Decode(b)
		if err != nil {
			t.Fatalf("Decode(Encode(r)) = %v\n%s", err, b)
		}
		if d := diffRecords(r, again); d != "" {
			t.Fatalf("record changed over Encode and Decode: %s", d)
		}
		if b2, err := Encode(again); err != nil || !bytes.Equal(b, b2) {
			t.Fatalf("second Encode differs (%v):\n%s\n%s", err, b, b2)
		}
	})
}

// TestDecodeRejectsBrokenInvariants: every record of corruptSamples is
// refused with ErrCorrupt naming the disk at fault, and the sound samples
// load.
func TestDecodeRejectsBrokenInvariants(t *testing.T) {
	for name, r := range corruptSamples() {
		disk := strings.TrimSpace(name)
		t.Run(name, func(t *testing.T) {
			b, err := Encode(r)
			if err != nil {
				t.Fatal(err)
			}
			got, err := Decode(b)
			if !errors.Is(err, ErrCorrupt) || got != nil || !strings.Contains(err.Error(), `"`+disk+`"`) {
				t.Fatalf("Decode = %v, %v; want ErrCorrupt naming disk %q", got, err, disk)
			}
		})
	}
	for _, r := range []*Record{sample(), fullSample()} {
		b, err := Encode(r)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := Decode(b); err != nil {
			t.Fatalf("sound record refused: %v", err)
		}
	}
}

// diffRecords describes the difference between two records, "" when they
// are equal: times compare as instants, and a nil map or slice equals an
// empty one (the JSON form drops both). Every other field, present or
// future, compares exactly.
func diffRecords(a, b *Record) string {
	na, nb := normalized(a), normalized(b)
	if reflect.DeepEqual(na, nb) {
		return ""
	}
	return fmt.Sprintf("\n%+v\n%+v", na, nb)
}

// normalized returns a deep copy of r with times in UTC and empty maps and
// slices set to nil.
func normalized(r *Record) Record {
	c := *r
	if len(c.Problems) == 0 {
		c.Problems = nil
	}
	c.Disks = map[string]*Disk{}
	for id, d := range r.Disks {
		nd := *d
		nd.UpdatedAt = nd.UpdatedAt.UTC()
		if d.Volume != nil {
			v := *d.Volume
			v.CreatedAt = v.CreatedAt.UTC()
			if len(v.Parameters) == 0 {
				v.Parameters = nil
			}
			nd.Volume = &v
		}
		c.Disks[id] = &nd
	}
	return c
}
