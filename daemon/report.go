package daemon

import (
	"context"
	"log/slog"

	"github.com/cachelun/cachelun/conf"
)

// logRecovered says, per cache, what the start found on the media: the
// keys replayed from the journal, the dirty data not yet written back and
// the writes of a crashed process recovered from the intent log. After a
// crash (keys recovered) the line is a warning, so an operator who did
// not know the previous daemon died learns it here. It runs right after
// the caches open, before any LUN serves, so the figures are the
// recovery's (only GC, which drops clean keys, may have run).
func (d *Daemon) logRecovered(caches []conf.Cache) {
	for _, c := range caches {
		oc, ok := d.eng.cache(c.Name)
		if !ok {
			continue
		}
		st := oc.cache.Stats()
		keys := oc.cache.LogKeys()
		intent := st.IntentRecoveredKeys
		level, msg := slog.LevelInfo, "cache replayed"
		if intent > 0 {
			level, msg = slog.LevelWarn, "cache recovered after a crash"
		}
		d.log.Log(context.Background(), level, msg, "cache", c.Name, "keys_replayed", keys-min(keys, intent),
			"dirty_bytes", st.DirtyBytes, "dirty", conf.FormatSize(st.DirtyBytes),
			"intent_recovered_keys", intent, "journal_lsn", st.KeyHead.LSN)
	}
}

// logDirtyLeft says, per volume, how much dirty data a graceful shutdown
// leaves in its cache for the next start (writeback only goes on then),
// and per cache the total, which includes volumes no longer configured.
// It runs once the caches are closed (a writeback pass running at the
// shutdown may still have written some back), so the figures are what the
// next start finds.
func (d *Daemon) logDirtyLeft() {
	if d.eng == nil {
		return
	}
	cfg := d.config()
	for _, c := range cfg.Caches {
		oc, ok := d.eng.cache(c.Name)
		if !ok {
			continue
		}
		for _, v := range cfg.Volumes {
			if v.Cache != c.Name {
				continue
			}
			if vol, ok := d.eng.cacheVolume(v.Name); ok {
				n := vol.Stats().DirtyBytes
				d.log.Info("shutdown: dirty data left in the cache for the next start", "volume", v.Name, "cache", c.Name,
					"dirty_bytes", n, "dirty", conf.FormatSize(n))
			}
		}
		n := oc.cache.Stats().DirtyBytes
		d.log.Info("shutdown: dirty data left in the cache file", "cache", c.Name, "dirty_bytes", n, "dirty", conf.FormatSize(n))
	}
}
