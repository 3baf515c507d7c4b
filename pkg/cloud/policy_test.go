package cloud

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"
)

// TestRAMPolicyIsLeastPrivilege checks deploy/ram-policy.json against the
// API actions a full discovery (the node driver) and the cluster
// component's calls (Instances) really make: every action called is
// allowed, nothing else is, and nothing is writable.
func TestRAMPolicyIsLeastPrivilege(t *testing.T) {
	b, err := os.ReadFile(filepath.Join("..", "..", "deploy", "ram-policy.json"))
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
			t.Fatalf("unexpected effect %q", s.Effect)
		}
		for _, a := range s.Action {
			if strings.Contains(a, "*") || !strings.HasPrefix(a, "ecs:Describe") {
				t.Errorf("action %q is broader than read-only Describe calls", a)
			}
			allowed = append(allowed, strings.TrimPrefix(a, "ecs:"))
		}
	}
	f, devices := ecsFixture(t)
	if _, _, err := newSource(t, f, devices, filepath.Join(t.TempDir(), "c")).Discover(context.Background()); err != nil {
		t.Fatal(err)
	}
	// The cluster component's calls.
	if _, err := newAPI(t, f, nil).Instances(context.Background(), []string{testInstance.ID}); err != nil {
		t.Fatal(err)
	}
	called := map[string]bool{}
	for _, c := range f.APICalls() {
		called[c["Action"]] = true
	}
	var used []string
	for a := range called {
		used = append(used, a)
	}
	sort.Strings(used)
	sort.Strings(allowed)
	if strings.Join(used, ",") != strings.Join(allowed, ",") {
		t.Fatalf("policy allows %v, the driver calls %v", allowed, used)
	}
}
