package redistest

import (
	"strings"
	"testing"
)

// The report names how many tests were skipped, for want of what, and how
// to run them.
func TestReportSkips(t *testing.T) {
	var b strings.Builder
	reportSkips(&b, 15)
	got := b.String()
	for _, want := range []string{"15 tests", "Redis Cluster", "redis-server", "redis-cli",
		"apt-get install redis-server", "CHAT_REQUIRE_REDIS=1", "CHAT_REQUIRE_CLUSTER=1"} {
		if !strings.Contains(got, want) {
			t.Errorf("report lacks %q: %q", want, got)
		}
	}
}
