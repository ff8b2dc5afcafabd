"""`gptflow sweep`: trials that are ordinary pipeline runs sharing every stage they can."""
