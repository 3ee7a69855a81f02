package tracebench

import "testing"

// A log of one-block segments frees its blocks in the order they came:
// on reads alone (no overwrite moves a block) it is FIFO, whichever
// segment GC picks among equally live ones.
func TestLogOfOneBlockSegmentsIsFIFO(t *testing.T) {
	for _, tr := range []Trace{
		Zipf("zipf", 0.8, 2000, 20000, 1),
		Loop("loop", 1100, 10000, 2),
	} {
		want := FIFO(tr, 1000)
		for _, clean := range []bool{false, true} {
			got := Log(tr, 1000, LogConfig{SegBlocks: 1, Clean: clean})
			if got.Result != want {
				t.Errorf("%s, clean %v: Log %+v, FIFO %+v", tr.Name, clean, got.Result, want)
			}
			if got.WriteAmp != 1 {
				t.Errorf("%s, clean %v: write amplification %.3f without moves", tr.Name, clean, got.WriteAmp)
			}
		}
	}
}

// Overwrites leave dead copies that take the log's room: eight writes of
// one block fill both segments of an eight-block log, and the block is
// evicted with the segment holding its last copy once four other blocks
// are read, unless the cleaner moves it.
func TestLogKeepsDeadCopies(t *testing.T) {
	var tr Trace
	tr.Blocks = 8
	for range 8 {
		tr.Reqs = append(tr.Reqs, Req{Block: 0, N: 1, Write: true})
	}
	for b := uint64(1); b <= 4; b++ {
		tr.Reqs = append(tr.Reqs, Req{Block: b, N: 1})
	}
	tr.Reqs = append(tr.Reqs, Req{Block: 0, N: 1}, Req{Block: 5, N: 1}, Req{Block: 0, N: 1})
	for _, c := range []struct {
		cfg      LogConfig
		hits     uint64
		writeAmp float64
	}{
		{LogConfig{SegBlocks: 4}, 1, 1},
		{LogConfig{SegBlocks: 4, Clean: true}, 1, 1},
		// 13 blocks appended (8 writes, 5 misses) by the time block 5
		// needs room; moving block 0 is within a budget of 1.
		{LogConfig{SegBlocks: 4, Clean: true, MoveShare: 1}, 2, 14.0 / 13},
		// ... and not within one of 1/20.
		{LogConfig{SegBlocks: 4, Clean: true, MoveShare: 0.05}, 1, 1},
	} {
		r := Log(tr, 8, c.cfg)
		if r.ReadBlocks != 7 || r.ReadHitBlock != c.hits || r.WriteAmp != c.writeAmp {
			t.Errorf("%+v: %d of %d read blocks hit at write amplification %.4f, want %d of 7 at %.4f", c.cfg, r.ReadHitBlock, r.ReadBlocks, r.WriteAmp, c.hits, c.writeAmp)
		}
	}
	// LRU of the same capacity keeps block 0 throughout.
	if r := LRU(tr, 8); r.ReadHitBlock != 2 {
		t.Errorf("LRU: %d hits, want 2", r.ReadHitBlock)
	}
}

// The cleaner's moves stay within its budget.
func TestLogCleanerBudget(t *testing.T) {
	tr := Mixed("mixed", 1.0, 8000, 40000, 0.3, 3)
	for _, share := range []float64{0.05, 0.2, 0.5} {
		r := Log(tr, 2000, LogConfig{SegBlocks: 64, Clean: true, MoveShare: share})
		if r.WriteAmp > 1+share {
			t.Errorf("move share %.2f: write amplification %.3f", share, r.WriteAmp)
		}
		if r.WriteAmp == 1 {
			t.Errorf("move share %.2f: the cleaner moved nothing", share)
		}
	}
}
