package cloud

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"
)

// policyActions reads the actions a RAM policy under deploy/ allows.
func policyActions(t *testing.T, file string) []string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("..", "..", "deploy", file))
	if err != nil {
		t.Fatal(err)
	}
	var policy struct {
		Statement []struct {
			Effect   string
			Action   []string
			Resource string
		}
	}
	if err := json.Unmarshal(b, &policy); err != nil {
		t.Fatal(err)
	}
	var allowed []string
	for _, s := range policy.Statement {
		if s.Effect != "Allow" {
			t.Fatalf("%s: unexpected effect %q", file, s.Effect)
		}
		for _, a := range s.Action {
			if strings.Contains(a, "*") {
				t.Errorf("%s: action %q is a wildcard", file, a)
			}
			allowed = append(allowed, strings.TrimPrefix(a, "ecs:"))
		}
	}
	sort.Strings(allowed)
	return allowed
}

// actionsCalled lists the API actions the fake answered, sorted.
func actionsCalled(f *Fake) []string {
	called := map[string]bool{}
	for _, c := range f.APICalls() {
		called[c["Action"]] = true
	}
	var used []string
	for a := range called {
		used = append(used, a)
	}
	sort.Strings(used)
	return used
}

// TestRAMPolicyIsLeastPrivilege checks deploy/ram-policy.json against the
// API actions a full discovery (the node driver) and the cluster
// component's reads (Instances, ActiveEvents, DiskErrors) really make:
// every action called is allowed, nothing else is, and nothing is
// writable. The one write, AcceptInquiredSystemEvent, is alone in the
// optional deploy/ram-policy-accept-events.json.
func TestRAMPolicyIsLeastPrivilege(t *testing.T) {
	ctx := context.Background()
	allowed := policyActions(t, "ram-policy.json")
	for _, a := range allowed {
		if !strings.HasPrefix(a, "Describe") {
			t.Errorf("ram-policy.json: action %q is not a read-only Describe call", a)
		}
	}
	f, devices := ecsFixture(t)
	if _, _, err := newSource(t, f, devices, filepath.Join(t.TempDir(), "c")).Discover(ctx); err != nil {
		t.Fatal(err)
	}
	// The cluster component's reads.
	api := newAPI(t, f, nil)
	if _, err := api.Instances(ctx, []string{testInstance.ID}); err != nil {
		t.Fatal(err)
	}
	if _, err := api.ActiveEvents(ctx, []string{testInstance.ID}, "SystemMaintenance.IsolateErrorDisk"); err != nil {
		t.Fatal(err)
	}
	if _, err := api.DiskErrors(ctx, []string{"d-bp1aaa"}, time.Now()); err != nil {
		t.Fatal(err)
	}
	if used := actionsCalled(f); strings.Join(used, ",") != strings.Join(allowed, ",") {
		t.Fatalf("ram-policy.json allows %v, the driver and the cluster component call %v", allowed, used)
	}

	accept := policyActions(t, "ram-policy-accept-events.json")
	f2 := newFake(t)
	f2.InjectEvent(FakeEvent{ID: "e-1", InstanceID: testInstance.ID, Type: "SystemMaintenance.IsolateErrorDisk", Status: "Inquiring", CanAccept: true})
	if err := newAPI(t, f2, nil).AcceptEvent(ctx, "e-1"); err != nil {
		t.Fatal(err)
	}
	if used := actionsCalled(f2); strings.Join(used, ",") != strings.Join(accept, ",") {
		t.Fatalf("ram-policy-accept-events.json allows %v, accepting an event calls %v", accept, used)
	}
}
