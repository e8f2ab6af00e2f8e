package redistest

import (
	"strings"
	"testing"
)

// The report names how many tests were skipped and how to run them.
func TestReportSkips(t *testing.T) {
	var b strings.Builder
	reportSkips(&b, 15)
	if got := b.String(); !strings.Contains(got, "15 tests") || !strings.Contains(got, "apt-get install redis-server") || !strings.Contains(got, "CHAT_REQUIRE_REDIS=1") {
		t.Errorf("report = %q", got)
	}
}
