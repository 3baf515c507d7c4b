package v1alpha1

import (
	"strings"
	"testing"

	"k8s.io/apimachinery/pkg/util/validation"
)

// TestObjectName: a name is "<node>-<disk ID>" when that is a valid object
// name as it stands; otherwise it is made valid and unique with a hash:
// IDs that differ only in case or in invalid characters, and long ones,
// never share a name.
func TestObjectName(t *testing.T) {
	if got := ObjectName("node-a", "serial-bp1abc"); got != "node-a-serial-bp1abc" {
		t.Fatalf("plain name: %q", got)
	}
	long := strings.Repeat("x", 300)
	ids := []string{"serial-BP1ABC", "serial-bp1abc", "serial-bp1_abc", "serial-bp1:abc", "loop-h0123", long, long + "y", "-x-", ".x."}
	seen := map[string]string{}
	for _, id := range ids {
		n := ObjectName("node-a", id)
		if errs := validation.IsDNS1123Subdomain(n); len(errs) > 0 {
			t.Errorf("ObjectName(node-a, %.20q) = %q: %v", id, n, errs)
		}
		if other, dup := seen[n]; dup {
			t.Errorf("%.20q and %.20q share the name %q", id, other, n)
		}
		seen[n] = id
	}
	if ObjectName("Node-A", "x") == ObjectName("node-a", "x") {
		t.Error("nodes differing in case share a name")
	}
}
