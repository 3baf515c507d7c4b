package driver

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"runtime"
	"strings"
	"testing"
	"unicode/utf8"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"github.com/kubernetes-csi/csi-lib-utils/protosanitizer"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/ecs-localdisk/ecs-localdisk-csi/internal/testutil"
)

// TestForLogBoundsEveryField renders hostile messages: every string and map
// key is cut with its length, maps and lists keep a bounded number of
// entries and say how many there were, multi-byte text is cut whole,
// secrets (values and keys, also in maps too long to keep whole) never
// appear, and short messages are rendered whole as valid JSON.
func TestForLogBoundsEveryField(t *testing.T) {
	long := strings.Repeat("x", 10000)
	params := map[string]string{}
	for i := 0; i < 100; i++ {
		params[fmt.Sprintf("key-%03d", i)] = "v"
	}
	caps := make([]*csi.VolumeCapability, 50)
	for i := range caps {
		caps[i] = testutil.MountCap("ext4")
	}
	flags := make([]string, 40)
	for i := range flags {
		flags[i] = fmt.Sprintf("f-%03d", i)
	}
	secrets := map[string]string{}
	for i := 0; i < 100; i++ {
		secrets[fmt.Sprintf("secret-%03d-", i)+long] = "value-" + long
	}
	ctx := map[string]string{}
	for i := 0; i < 20; i++ {
		ctx[fmt.Sprint(i)] = "c"
	}
	topo := make([]*csi.Topology, 30)
	for i := range topo {
		topo[i] = &csi.Topology{Segments: ctx}
	}
	entries := make([]*csi.ListVolumesResponse_Entry, 30)
	for i := range entries {
		entries[i] = &csi.ListVolumesResponse_Entry{Volume: &csi.Volume{VolumeId: fmt.Sprint(i), AccessibleTopology: topo}}
	}
	cases := []struct {
		name      string
		msg       any
		want, not []string
	}{
		{"long string", &csi.DeleteVolumeRequest{VolumeId: long}, []string{`"volume_id":"` + long[:logMaxString] + `...(10000 bytes)"`}, nil},
		{"long map key and value", &csi.CreateVolumeRequest{Name: "n", Parameters: map[string]string{long: long}},
			[]string{`"` + long[:logMaxString] + `...(10000 bytes)":"` + long[:logMaxString] + `...(10000 bytes)"`}, nil},
		{"many map entries", &csi.CreateVolumeRequest{Parameters: params},
			[]string{`"key-000":"v"`, fmt.Sprintf(`"key-%03d":"v"`, logMaxEntries-1), `"...":"(100 entries)"`},
			[]string{fmt.Sprintf(`"key-%03d"`, logMaxEntries)}},
		{"many list entries", &csi.CreateVolumeRequest{VolumeCapabilities: caps},
			[]string{`"SINGLE_NODE_WRITER"`, "} ...(cut volume_capabilities: 50 entries)"}, nil},
		{"many strings in a nested list", &csi.NodePublishVolumeRequest{VolumeCapability: testutil.MountCap("ext4", flags...)},
			[]string{`"mount_flags":["f-000",`, fmt.Sprintf(`"f-%03d","...(40 entries)"]`, logMaxEntries-1)},
			[]string{fmt.Sprintf(`"f-%03d"`, logMaxEntries)}},
		{"secrets", &csi.NodeStageVolumeRequest{VolumeId: "v", Secrets: map[string]string{"user-key": "user-value"}},
			[]string{`"secrets":"***stripped***"`, `"volume_id":"v"`}, []string{"user-key", "user-value"}},
		{"many and long secrets", &csi.ControllerPublishVolumeRequest{VolumeId: "v", Secrets: secrets},
			[]string{`"secrets":"***stripped***"`, `"volume_id":"v"`}, []string{"secret-", "value-", "entries"}},
		{"list of messages with cut lists and maps", &csi.ListVolumesResponse{Entries: entries},
			[]string{`{"entries":[{"volume":{"accessible_topology":[{"segments":{"...":"(20 entries)","0":"c",`,
				" ...(cut entries: 30 entries, entries.volume.accessible_topology: 30 entries)"}, nil},
		{"many cut lists", &csi.ListVolumesResponse{Entries: []*csi.ListVolumesResponse_Entry{
			{Volume: &csi.Volume{AccessibleTopology: topo[:17]}}, {Volume: &csi.Volume{AccessibleTopology: topo[:18]}},
			{Volume: &csi.Volume{AccessibleTopology: topo[:19]}}, {Volume: &csi.Volume{AccessibleTopology: topo[:20]}},
			{Volume: &csi.Volume{AccessibleTopology: topo[:20]}}, {Volume: &csi.Volume{AccessibleTopology: topo[:20]}},
			{Volume: &csi.Volume{AccessibleTopology: topo[:21]}}, {Volume: &csi.Volume{AccessibleTopology: topo[:22]}},
		}}, []string{" ...(cut entries.volume.accessible_topology: 17 entries, entries.volume.accessible_topology: 18 entries, " +
			"entries.volume.accessible_topology: 19 entries, entries.volume.accessible_topology: 20 entries, 2 more)"}, nil},
		{"short whole", &csi.NodeGetInfoResponse{NodeId: "node-1", MaxVolumesPerNode: 3},
			[]string{`{"max_volumes_per_node":3,"node_id":"node-1"}`}, nil},
		{"not a message", strings.Repeat("y", 5000), []string{"...(5000 bytes)"}, nil},
		{"nil", nil, []string{"<nil>"}, nil},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			out := forLog(c.msg).String()
			if len(out) > logMaxMessage+32 {
				t.Errorf("rendered %d bytes, more than %d", len(out), logMaxMessage+32)
			}
			for _, w := range c.want {
				if !strings.Contains(out, w) {
					t.Errorf("lacks %.80q... in %.300s ... %s", w, out, out[max(0, len(out)-200):])
				}
			}
			for _, n := range c.not {
				if strings.Contains(out, n) {
					t.Errorf("holds %q: %s", n, out)
				}
			}
			js, _, _ := strings.Cut(out, " ...(cut ")
			if len(out) < logMaxMessage && strings.HasPrefix(out, "{") && !json.Valid([]byte(js)) {
				t.Errorf("not valid JSON: %s", out)
			}
		})
	}
	cut := capString(strings.Repeat("é", 300), 255)
	if !utf8.ValidString(cut) || !strings.HasSuffix(cut, "...(600 bytes)") || len(cut) > 255+len("...(600 bytes)") {
		t.Errorf("multi-byte cut: %q", cut)
	}
	big := &csi.CreateVolumeRequest{Parameters: map[string]string{}}
	for i := 0; i < logMaxEntries; i++ {
		big.Parameters[fmt.Sprint(i)] = long
	}
	if out := forLog(big).String(); len(out) > logMaxMessage+32 || !strings.HasSuffix(out, " bytes)") {
		t.Errorf("whole message not bounded: %d bytes, ends %q", len(out), out[len(out)-20:])
	}
	if e := errForLog(status.Error(codes.Aborted, long)); len(e.Error()) > logMaxError+32 || status.Code(errors.Unwrap(e)) != codes.Aborted {
		t.Errorf("error for log: %d bytes, unwraps to %v", len(e.Error()), errors.Unwrap(e))
	}
	if errForLog(nil) != nil {
		t.Error("errForLog(nil) is not nil")
	}
}

// TestRecoverPanicAnswersInternal panics in a handler with values of every
// kind, including nil and a 1 MiB string: each call answers INTERNAL, and
// the log line with panic value and stack stays bounded.
func TestRecoverPanicAnswersInternal(t *testing.T) {
	logs := captureLogs(t, "0")
	info := &grpc.UnaryServerInfo{FullMethod: csi.Node_NodeGetInfo_FullMethodName}
	var nilMap map[string]*csi.Volume
	for name, fn := range map[string]func(){
		"string":       func() { panic("boom") },
		"error":        func() { panic(errors.New("boom")) },
		"nil":          func() { panic(nil) },
		"nil deref":    func() { _ = nilMap["x"].VolumeId },
		"huge value":   func() { panic(strings.Repeat("h", 1<<20)) },
		"deep stack":   func() { deep(200) },
		"bad Stringer": func() { panic(badStringer{}) },
	} {
		t.Run(name, func(t *testing.T) {
			before := logs.Len()
			resp, err := recoverPanic(context.Background(), &csi.NodeGetInfoRequest{}, info, func(context.Context, any) (any, error) {
				fn()
				return &csi.NodeGetInfoResponse{}, nil
			})
			if resp != nil || status.Code(err) != codes.Internal {
				t.Fatalf("got %v, %v; want INTERNAL", resp, err)
			}
			out := logs.String()[before:]
			if !strings.Contains(out, `"GRPC handler panicked" method="/csi.v1.Node/NodeGetInfo"`) || !strings.Contains(out, "goroutine ") {
				t.Errorf("panic or stack not logged:\n%s", out)
			}
			if len(out) > logMaxStack+2*logMaxError+1024 {
				t.Errorf("one panic logged %d bytes", len(out))
			}
		})
	}
	resp, err := recoverPanic(context.Background(), nil, info, func(context.Context, any) (any, error) { return "ok", nil })
	if resp != "ok" || err != nil {
		t.Errorf("a call without panic: %v, %v", resp, err)
	}
}

func deep(n int) {
	if n == 0 {
		panic("deep")
	}
	deep(n - 1)
}

type badStringer struct{}

func (badStringer) String() string { panic("String panics too") }

// TestNeedsInventory: every method of the Controller and Node services but
// the capability queries waits for the inventory, methods added to the
// spec later included; Identity never does.
func TestNeedsInventory(t *testing.T) {
	for _, sd := range []grpc.ServiceDesc{csi.Identity_ServiceDesc, csi.Controller_ServiceDesc, csi.Node_ServiceDesc} {
		for _, m := range sd.Methods {
			method := "/" + sd.ServiceName + "/" + m.MethodName
			want := sd.ServiceName != csi.Identity_ServiceDesc.ServiceName && !strings.HasSuffix(m.MethodName, "GetCapabilities")
			if got := needsInventory(method); got != want {
				t.Errorf("needsInventory(%s) = %v, want %v", method, got, want)
			}
		}
	}
}

// TestForLogRendersACappedCopy: a message within the bounds logs exactly
// as protosanitizer renders it for peers; rendering never changes the
// message it was given, and costs far less memory than the 1 MiB fields the
// message carries, as it copies and serialises only the capped parts.
func TestForLogRendersACappedCopy(t *testing.T) {
	small := &csi.NodeStageVolumeRequest{VolumeId: "v", StagingTargetPath: "/staging", VolumeCapability: testutil.MountCap("xfs", "noatime"),
		Secrets: map[string]string{"token": "t"}, PublishContext: map[string]string{"a": "<b>&"}, VolumeContext: map[string]string{"c": "d"}}
	if got, want := forLog(small).String(), protosanitizer.StripSecrets(small).String(); got != want {
		t.Errorf("forLog renders\n%s\nprotosanitizer renders\n%s", got, want)
	}

	const mib = 1 << 20
	params := map[string]string{strings.Repeat("k", mib): "v"}
	for i := range 1000 {
		params[fmt.Sprint(i)] = "v"
	}
	flags := make([]string, 100)
	for i := range flags {
		flags[i] = "f"
	}
	msg := &csi.CreateVolumeRequest{Name: strings.Repeat("n", mib), Parameters: params,
		VolumeCapabilities: []*csi.VolumeCapability{testutil.MountCap(strings.Repeat("x", mib), flags...)},
		Secrets:            map[string]string{"token": strings.Repeat("s", mib)}}
	want := proto.Clone(msg)
	var before, after runtime.MemStats
	const renders = 10
	runtime.ReadMemStats(&before)
	for range renders {
		if out := forLog(msg).String(); len(out) > logMaxMessage+32 {
			t.Fatalf("rendered %d bytes", len(out))
		}
	}
	runtime.ReadMemStats(&after)
	if per := (after.TotalAlloc - before.TotalAlloc) / renders; per > 256<<10 {
		t.Errorf("one render allocated %d bytes for a message of 4 MiB", per)
	}
	if !proto.Equal(msg, want) {
		t.Error("rendering changed the message")
	}
}

// BenchmarkForLog renders a request at the limits of what gRPC accepts:
// 1 MiB fields, a map of thousands of entries, and nested lists of maps.
func BenchmarkForLog(b *testing.B) {
	many := map[string]string{}
	for i := range 3000 {
		many[fmt.Sprintf("%0200d", i)] = strings.Repeat("v", 200)
	}
	topo := make([]*csi.Topology, 20)
	for i := range topo {
		topo[i] = &csi.Topology{Segments: many}
	}
	msg := &csi.CreateVolumeRequest{Name: strings.Repeat("n", 1<<20), Parameters: many,
		AccessibilityRequirements: &csi.TopologyRequirement{Requisite: topo, Preferred: topo}}
	b.ReportAllocs()
	for b.Loop() {
		_ = forLog(msg).String()
	}
}
