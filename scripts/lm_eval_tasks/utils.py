"""d2f_smoke_gen's scoring: a response is right when it names one of the item's answers as a whole word."""
import re


def process_results(doc, results):
    response = results[0]
    hit = any(re.search(r"\b" + re.escape(answer) + r"\b", response, re.IGNORECASE) for answer in doc["answers"])
    return {"contains_answer": float(hit)}
