"""Evaluation: the official answer and linking metrics, teacher-forced Recall@k, held-out losses, and
end-to-end multi-hop QA and entity-linking evaluation. Imports every subpackage below it."""
