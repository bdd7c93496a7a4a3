#!/usr/bin/env bash
# Regenerates the two texts from Debian's r-cran-janeaustenr (public-domain novels as R data):
#   tests/fixtures/pride_ch1_15.txt   Pride and Prejudice, chapters 1-15 (evaluation text)
#   svdq_edge/data/calibration.txt    Sense and Sensibility, chapters 1-3 (SVDq calibration text)
set -euo pipefail
cd "$(dirname "$0")/.."
apt-get install -y -qq r-cran-janeaustenr >/dev/null
Rscript -e 'library(janeaustenr); writeLines(prideprejudice, "/tmp/pride.txt"); writeLines(sensesensibility, "/tmp/sense.txt")'
sed -n '7,2570p' /tmp/pride.txt > tests/fixtures/pride_ch1_15.txt      # "Chapter 1" .. before "Chapter 16"
sed -n '10,529p' /tmp/sense.txt > svdq_edge/data/calibration.txt       # "CHAPTER 1" .. before "CHAPTER 4"
sha256sum tests/fixtures/pride_ch1_15.txt svdq_edge/data/calibration.txt
