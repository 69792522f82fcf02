"""Analysis of real processes: parse /proc/PID/maps and smaps, find guards, predict each design's VMAs."""
