"""Reading, cleaning, labelling, sampling and splitting the reviews, and tokenizing them: pipeline (the
run's data step), splits, labels, hf (data=hf through `datasets`)."""
